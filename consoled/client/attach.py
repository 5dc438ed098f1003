"""``consoled attach``: a terminal on a session, in one blocking poll loop.

Imports only the stdlib, msgpack and the protocol package, so it starts fast.
The terminal goes into raw mode once the daemon has accepted the attach, and
is restored on every way out: detach, session end, daemon gone, a signal
(SIGTERM, SIGHUP, SIGINT), or an exception.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import shlex
import signal
import struct
import sys
import termios
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from ..frozen import Frozen, frozen, replace
from ..protocol import CLOSED, NEED_DATA, ErrorCode, ProtocolError
from ..protocol import events as ev
from .conn import RESTART_WAIT, Client, ClientError, DaemonUnavailable
from .detachkeys import (
    DEFAULT_DETACH_KEYS,
    DetachKeysError,
    DetachMatcher,
    key_spec,
    parse_detach_keys,
)

if TYPE_CHECKING:
    from ..terminal.filter import OutputFilter

#: Seconds to wait for the daemon to confirm a detach before leaving anyway.
DETACH_CONFIRM_TIMEOUT: Final = 2.0
#: Seconds to wait for the daemon to answer the attach.
ATTACH_TIMEOUT: Final = 30.0
#: Bytes of sent input kept until the daemon says it consumed them (on a restart).
SENT_HISTORY: Final = 1024 * 1024
#: Exit statuses of ``consoled attach`` (and ``exec``) that are not the program's:
#: sysexits(3) codes, which no shell gives a command of its own.
EXIT_DAEMON_STOPPED: Final = 69  # EX_UNAVAILABLE: the daemon stopped
EXIT_CONNECTION_LOST: Final = 74  # EX_IOERR: the connection broke and could not be resumed
EXIT_LAGGED: Final = 75  # EX_TEMPFAIL: this client fell too far behind; attach again
READ_SIZE: Final = 64 * 1024
#: What pipe mode types when stdin ends: ctrl-d, a terminal's end-of-file (VEOF).
EOF_KEY: Final = b"\x04"
#: Pipe mode types it once the session's output has been quiet this long (seconds)...
EOF_QUIET: Final = 0.1
#: ...or this long after stdin ended, whichever comes first.
EOF_QUIET_MAX: Final = 2.0


class SignalExit(BaseException):
    """A terminating signal arrived; unwinds to restore the terminal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@frozen
class AttachOptions(Frozen):
    session: str
    read_only: bool = False
    detach_keys: bytes = b"\x10\x11"
    detach_wait: float = 0.5
    replay: int | None = None
    tty: bool = True
    #: Start with the session's current screen (as tmux), not a replay of raw bytes.
    screen: bool = True
    #: With ``screen``: lines of history put above it.
    history: int = 0

    #: Pipe mode: detach at the end of stdin, instead of sending the terminal's end-of-file.
    detach_on_eof: bool = False


def window_size(fd: int) -> tuple[int, int]:
    """The terminal's (rows, cols); (0, 0) when it has none."""
    try:
        packed = fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
    except OSError:
        return 0, 0
    rows, cols, _, _ = struct.unpack("HHHH", packed)
    return rows, cols


def make_raw(mode: list[Any]) -> list[Any]:
    """cfmakeraw(3) on a termios attribute list."""
    new = list(mode)
    iflag, oflag, cflag, lflag = (int(x) for x in new[:4])
    iflag &= ~(
        termios.IGNBRK
        | termios.BRKINT
        | termios.PARMRK
        | termios.ISTRIP
        | termios.INLCR
        | termios.IGNCR
        | termios.ICRNL
        | termios.IXON
    )
    oflag &= ~termios.OPOST
    lflag &= ~(termios.ECHO | termios.ECHONL | termios.ICANON | termios.ISIG | termios.IEXTEN)
    cflag &= ~(termios.CSIZE | termios.PARENB)
    cflag |= termios.CS8
    new[0:4] = [iflag, oflag, cflag, lflag]
    cc = list(new[6])
    cc[termios.VMIN] = 1
    cc[termios.VTIME] = 0
    new[6] = cc
    return new


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    saved = termios.tcgetattr(fd)
    termios.tcsetattr(fd, termios.TCSANOW, make_raw(saved))  # keep typeahead
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


#: Signals that end an attach, with the terminal put back (their default
#: action would leave it raw; SIGQUIT would also dump core).
UNWINDING: Final = (
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGALRM,
)


@contextlib.contextmanager
def signal_pipe() -> Iterator[int]:
    """Route SIGWINCH to a pipe (woken in the poll loop); make the signals whose
    default action ends the process unwind (the terminal is put back on the way)."""
    r, w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def unwind(signum: int, frame: FrameType | None) -> None:
        raise SignalExit(signum)

    def note(signum: int, frame: FrameType | None) -> None:
        pass  # the wakeup fd carries it

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGWINCH, *UNWINDING)}
    old_wakeup = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
    try:
        signal.signal(signal.SIGWINCH, note)
        for sig in UNWINDING:
            signal.signal(sig, unwind)
        yield r
    finally:
        signal.set_wakeup_fd(old_wakeup)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        os.close(r)
        os.close(w)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except BlockingIOError:
            select.select([], [fd], [])
            continue
        view = view[n:]


def _attach_request(
    options: AttachOptions, size: tuple[int, int], resume: int | None = None, uid: str | None = None
) -> ev.Attach:
    rows, cols = size if size[0] and size[1] else (0, 0)
    return ev.Attach(
        options.session,
        read_only=options.read_only,
        replay=options.replay,
        rows=rows,
        cols=cols,
        resume=resume,
        uid=uid,
        screen=options.screen,
        history=options.history,
    )


class Attacher:
    """One attach session: the poll loop between terminal and daemon.

    If the stream breaks off because the daemon restarts (a reexec says so
    with ``ended: restarting``; a crash just closes the connection), the
    attacher connects again for up to :data:`~.conn.RESTART_WAIT` seconds
    and resumes at the byte it had reached, so the terminal sees no gap and
    no repeat.  Keys typed meanwhile wait in the terminal's input buffer.
    """

    def __init__(
        self,
        client: Client,
        attached: ev.Attached,
        options: AttachOptions,
        stdin: int,
        stdout: int,
    ) -> None:
        self.client = client
        self.options = options
        self.stdin = stdin
        self.stdout = stdout
        self.matcher = DetachMatcher(options.detach_keys, options.detach_wait)
        self.stdin_open = True
        #: Pipe mode, stdin ended: when to type the end-of-file, and the latest it may be.
        self.eof_due: float | None = None
        self.eof_limit = 0.0
        self.ended: ev.Ended | None = None
        self.at_line_start = True
        self.uid = attached.uid
        #: The session's name, as the daemon last said it (it may be renamed).
        self.session = attached.session
        #: Stream offset of the next byte we expect.
        self.offset = attached.offset
        self.resumes = 0
        #: Input sent on this connection (its newest SENT_HISTORY bytes), and how
        #: much was sent before those: a restarting daemon says how much it consumed.
        self.sent = bytearray()
        self.sent_before = 0
        #: Input to send first once connected again.
        self.unsent = b""
        self.broken = False
        #: On a terminal: queries are taken out of the output (the daemon answers
        #: them; this terminal must not), and the modes it sets are followed so
        #: that they can be undone when the attach ends.
        self.filter: OutputFilter | None = None
        if os.isatty(stdout):
            from ..terminal.filter import OutputFilter

            self.filter = OutputFilter(rows=window_size(stdout)[0] or None)

        self.warned_read_only = False

    def run(self, wakeup_fd: int) -> ev.Ended | None:
        """Pump until the stream ends; return the daemon's ``ended`` (None if it vanished)."""
        poller = select.poll()
        sock = self.client.fileno()
        poller.register(sock, select.POLLIN)
        poller.register(wakeup_fd, select.POLLIN)
        if self.stdin_open:
            poller.register(self.stdin, select.POLLIN)
        # The reply to `attach` may have arrived in the same read as the first
        # output: handle what the codec already holds before waiting on the socket.
        keep_going = self._handle_events()
        while True:
            if not keep_going or self.broken or self._restarting():
                poller.unregister(sock)
                if not self._resume():
                    return self.ended
                sock = self.client.fileno()
                poller.register(sock, select.POLLIN)
                keep_going = self._handle_events()
                continue
            if self.ended is not None:
                return self.ended
            timeout_ms = None
            deadlines = [d for d in (self.matcher.deadline, self.eof_due) if d is not None]
            if deadlines:
                timeout_ms = max(0, int((min(deadlines) - time.monotonic()) * 1000) + 1)
            for fd, _mask in poller.poll(timeout_ms):
                if fd == sock:
                    keep_going = self._from_daemon()
                    if not keep_going:
                        break
                elif fd == wakeup_fd:
                    self._signals(wakeup_fd)
                elif fd == self.stdin and not self._from_terminal():
                    poller.unregister(self.stdin)
                    self.stdin_open = False
                    if self.options.tty or self.options.detach_on_eof:
                        return self._detach()
                    self._end_of_input()
                if self.ended is not None:
                    break
            deadline = self.matcher.deadline
            if deadline is not None and time.monotonic() >= deadline:
                self._send_input(self.matcher.flush())
            if self.eof_due is not None and time.monotonic() >= self.eof_due:
                self.eof_due = None
                self._send_input(EOF_KEY)

    def _restarting(self) -> bool:
        return self.ended is not None and self.ended.reason is ev.EndReason.RESTARTING

    def _resume(self) -> bool:
        """Attach again where the stream broke off; False if that cannot be done."""
        self.client.close()
        if self._restarting():
            assert self.ended is not None
            self._requeue_input(self.ended.input)
        self.ended = None
        self.broken = False
        deadline = time.monotonic() + RESTART_WAIT
        size = window_size(self.stdin) if self.options.tty else (0, 0)
        request = _attach_request(self.options, size, resume=self.offset, uid=self.uid)
        while True:
            try:
                client = Client(self.client.path, timeout=ATTACH_TIMEOUT, wait=RESTART_WAIT)
                try:
                    attached = client.call(request, ev.Attached)
                except BaseException:
                    client.close()
                    raise
                break
            except DaemonUnavailable:
                if time.monotonic() >= deadline:
                    return False  # reported as a lost connection
                time.sleep(0.1)
            except ClientError as exc:
                self.ended = ev.Ended(ev.EndReason.EXITED, exc.message)
                return False
        client.sock.settimeout(None)
        self.client = client
        self.resumes += 1
        if attached.session != self.session:  # renamed meanwhile: found by its uid
            self._renamed(attached.session)
        self.sent, self.sent_before = bytearray(), 0
        unsent, self.unsent = self.unsent, b""
        self._send_input(unsent)
        missed = attached.offset - self.offset
        self.offset = attached.offset
        if missed > 0:
            self._notice(
                f"consoled: the daemon restarted; {missed} bytes of output were lost "
                "before this client could resume"
            )
        return True

    def _from_daemon(self) -> bool:
        """Handle what the daemon sent; False once it closed the connection."""
        try:
            self.client.receive_data()  # at EOF this feeds b"", which the codec takes as closed
        except DaemonUnavailable:
            return False  # a broken connection: the daemon died
        try:
            return self._handle_events()
        except ProtocolError:
            return False  # a connection cut inside a frame (the daemon died mid-write)

    def _handle_events(self) -> bool:
        """Handle every event the codec holds; False once the daemon closed the connection."""
        conn = self.client.conn
        while True:
            event = conn.next_event()
            if event is NEED_DATA:
                return True
            if event is CLOSED:
                return False
            if isinstance(event, ev.Output):
                self._write(event.data)
                self.offset += len(event.data)
                if self.eof_due is not None:
                    self.eof_due = min(time.monotonic() + EOF_QUIET, self.eof_limit)
            elif isinstance(event, ev.Screen):
                self._write(event.data)
                if event.approximate:
                    self._notice(
                        "consoled: the screen may be incomplete (the daemon did not follow "
                        "all of a flood of output); it is exact from the program's next redraw"
                    )
            elif isinstance(event, ev.Ended):
                self.ended = event
                if event.session is not None and event.session != self.session:
                    self._renamed(event.session)
                return True
            elif isinstance(event, ev.Error) and event.code is not ErrorCode.READ_ONLY:
                self._notice(f"consoled: {event.message}")

    def _renamed(self, name: str) -> None:
        """The session is called ``name`` now: say that, and resume it by that name."""
        self.session = name
        self.options = replace(self.options, session=name)

    def _write(self, data: bytes) -> None:
        if self.filter is not None:
            data = self.filter.feed(data)
        if data:
            write_all(self.stdout, data)
            self.at_line_start = data.endswith(b"\n")

    def restore_terminal(self) -> None:
        """Undo the modes the session's output left set (alternate screen, mouse...)."""
        if self.filter is not None:
            reset = self.filter.reset_sequence()
            if reset:
                with contextlib.suppress(OSError):
                    write_all(self.stdout, reset)

    def _from_terminal(self) -> bool:
        try:
            data = os.read(self.stdin, READ_SIZE)
        except BlockingIOError:
            return True
        except OSError as exc:
            if exc.errno == errno.EIO:
                return False  # the terminal hung up
            raise
        if not data:
            return False
        forward, detached = self.matcher.feed(data, time.monotonic())
        self._send_input(forward)
        if detached:
            self._detach()
        return True

    def _end_of_input(self) -> None:
        """Pipe mode, stdin ended: type the terminal's end-of-file, as ctrl-d at a prompt.

        The program then ends (a shell exits, ``cat`` finishes) and so does the attach.
        A read-only attach types nothing: it watches until the session ends.

        As a person would, it waits until the program has answered what was
        typed (its output quiet for :data:`EOF_QUIET`, at most
        :data:`EOF_QUIET_MAX` after stdin ended).  A ctrl-d that reaches a
        terminal in canonical mode is the kernel's end-of-file mark, and a
        program that then switches the terminal to raw mode (a shell between
        two commands, going back to its line editor) reads it as a NUL: the
        end of input would be lost, and the attach would never end.
        """
        if self.options.read_only:
            return
        self._send_input(self.matcher.flush())
        now = time.monotonic()
        self.eof_limit = now + EOF_QUIET_MAX
        self.eof_due = now + EOF_QUIET

    def _send_input(self, data: bytes) -> None:
        if not data:
            return
        if self.options.read_only:
            if not self.warned_read_only:
                self.warned_read_only = True
                self._notice("consoled: this attach is read-only; what you type is not sent")
            return
        if self.broken:
            self.unsent += data
            return
        try:
            self.client.send(ev.Input(data))
        except DaemonUnavailable:
            self.unsent += data  # the daemon died: sent again once it is back
            self.broken = True
            return
        self.sent += data
        excess = len(self.sent) - SENT_HISTORY
        if excess > 0:
            del self.sent[:excess]
            self.sent_before += excess

    def _requeue_input(self, consumed: int | None) -> None:
        """After a restart: queue again the input the old daemon did not consume."""
        if consumed is None:
            return
        start = consumed - self.sent_before
        if start < 0:
            self._notice(f"consoled: {-start} bytes of typed input may have been lost")
            start = 0
        self.unsent = bytes(self.sent[start:]) + self.unsent

    def _signals(self, wakeup_fd: int) -> None:
        try:
            signums = os.read(wakeup_fd, 64)
        except BlockingIOError:
            return
        if signal.SIGWINCH in signums and self.options.tty:
            rows, cols = window_size(self.stdin)
            if self.filter is not None and rows:
                self.filter.resize(rows)  # the terminal reset its scroll region
            if rows and cols and not self.broken and not self.options.read_only:
                try:
                    self.client.send(ev.WindowSize(rows, cols))
                except DaemonUnavailable:
                    self.broken = True  # the size goes with the attach that resumes

    def _detach(self) -> ev.Ended | None:
        try:
            self.client.send(ev.Detach())
        except DaemonUnavailable:
            self.ended = ev.Ended(ev.EndReason.DETACHED, "detached")
            return self.ended
        deadline = time.monotonic() + DETACH_CONFIRM_TIMEOUT
        self.client.sock.settimeout(DETACH_CONFIRM_TIMEOUT)
        while self.ended is None and time.monotonic() < deadline:
            try:
                if not self._from_daemon():
                    break
            except DaemonUnavailable:
                break
        if self.ended is None:
            self.ended = ev.Ended(ev.EndReason.DETACHED, "detached")
        return self.ended

    def _notice(self, text: str) -> None:
        prefix = "" if self.at_line_start else "\r\n"
        sys.stderr.write(prefix + text + ("\r\n" if self.options.tty else "\n"))
        sys.stderr.flush()
        self.at_line_start = True


class Attachment(NamedTuple):
    """How an attach ended."""

    #: The exit status for the command (see :func:`attach`).
    status: int
    #: The session's name by then (it may have been renamed meanwhile).
    session: str


def attach(
    control_path: str,
    options: AttachOptions,
    before_loop: Callable[[], int | None] | None = None,
    exit_status: Callable[[], int | None] | None = None,
) -> Attachment:
    """Attach the current terminal (or pipes) to a session, until it ends or is left.

    Args:
        control_path: the daemon's control socket.
        options: what to attach to, and how.
        before_loop: called once the daemon has accepted the attach and before the
            terminal goes raw; a non-None result aborts with that exit status.
        exit_status: once the session has ended, the process's exit status if the
            caller knows it better than the daemon (``consoled exec`` reaps it).

    Returns:
        The exit status (the program's if it ended while attached, as docker's:
        see the README) and the session's name at the end.
    """
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    tty = options.tty and os.isatty(stdin)
    if tty != options.tty:
        options = replace(options, tty=tty)
    if options.screen and not os.isatty(stdout):
        # A drawn screen is for a terminal; a file or a pipe gets the raw bytes.
        options = replace(options, screen=False)
    size = window_size(stdin) if tty else (0, 0)
    client = Client(control_path, timeout=ATTACH_TIMEOUT)
    attacher: Attacher | None = None
    try:
        # Sent again if the daemon dies before it answers (it comes back under
        # a service manager): an attach that never started can start again.
        attached = client.call(_attach_request(options, size), ev.Attached, again_if_lost=True)
        client.sock.settimeout(None)
        if before_loop is not None:
            status = before_loop()
            if status is not None:
                return Attachment(status, attached.session)
        attacher = Attacher(client, attached, options, stdin, stdout)
        ended: ev.Ended | None = None
        try:
            with (
                signal_pipe() as wakeup_fd,
                raw_terminal(stdin) if tty else contextlib.nullcontext(),
            ):
                try:
                    ended = attacher.run(wakeup_fd)
                finally:
                    attacher.restore_terminal()
        except SignalExit as exc:
            name = signal.Signals(exc.signum).name
            _say(
                attacher,
                f"consoled: interrupted by {name}; session {attacher.session} keeps running",
            )
            return Attachment(128 + exc.signum, attacher.session)
        if ended is not None and ended.reason is ev.EndReason.EXITED and exit_status is not None:
            own = exit_status()
            if own is not None:
                ended = replace(ended, exit_code=own)
        return Attachment(_report(attacher, attacher.session, ended), attacher.session)
    finally:
        (attacher.client if attacher is not None else client).close()


def _say(attacher: Attacher, text: str) -> None:
    prefix = "" if attacher.at_line_start else "\n"
    sys.stderr.write(prefix + text + "\n")
    sys.stderr.flush()


def _reattach_command(session: str, keys: bytes) -> str:
    """The command that attaches again with the detach keys this attach used."""
    usual = os.environ.get("CONSOLED_DETACH_KEYS", DEFAULT_DETACH_KEYS)
    with contextlib.suppress(DetachKeysError):
        if keys == parse_detach_keys(usual):
            return f"consoled attach {session}"
    return f"consoled attach --detach-keys {shlex.quote(key_spec(keys))} {session}"


def _report(attacher: Attacher, session: str, ended: ev.Ended | None) -> int:
    """Say why the attach ended; return the exit status (see docs: "Exit status")."""
    if ended is None:
        _say(attacher, "consoled: lost the connection to the daemon (it stopped or restarted)")
        return EXIT_CONNECTION_LOST
    reason = ended.reason
    again = _reattach_command(session, attacher.options.detach_keys)
    if reason is ev.EndReason.DETACHED:
        _say(attacher, f"consoled: detached from {session}; reattach with: {again}")
        return 0
    if reason in (ev.EndReason.EXITED, ev.EndReason.REMOVED):
        verb = "ended" if reason is ev.EndReason.EXITED else "was removed"
        if ended.exit_code is None:
            _say(attacher, f"consoled: session {session} {verb} (exit status unknown)")
            return 0
        if reason is ev.EndReason.REMOVED:
            _say(attacher, f"consoled: session {session} {verb} (exit status {ended.exit_code})")
        # Ended as programs end: nothing said, the status is ours (as docker
        # attach and exec; a script's stderr is the program's alone).
        return ended.exit_code
    if reason is ev.EndReason.LAGGED:
        _say(
            attacher,
            f"consoled: disconnected because this client fell behind the output (lagged); "
            f"reattach with: {again}",
        )
        return EXIT_LAGGED
    if reason is ev.EndReason.SHUTDOWN:
        _say(attacher, "consoled: the consoled daemon stopped; this attach has ended")
        return EXIT_DAEMON_STOPPED
    _say(attacher, f"consoled: the stream ended ({reason}) {ended.message}")
    return EXIT_CONNECTION_LOST
