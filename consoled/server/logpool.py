"""The log writer threads: queues of blocking file operations, run for the event loop.

Each session's log file has one :class:`OpQueue` (its :class:`~.logwriter.
LogWriter`, a subclass, fills it and runs its operations); the
:class:`LogWriters` pool runs the queues' operations in a few threads.
What comes of an operation that the event loop must know (a file opened,
a failure, room again) goes back to it with ``TrioToken.run_sync_soon``,
once per operation that has any.

- A queue's operations run one at a time, in the order queued.
- Operations on a log's names (creating it, renaming, moving aside,
  removing) also wait for every operation that another queue queued earlier
  on the same names: a session removed and made again, or a container id
  reused, has its old files removed or moved aside before the new file is
  made, never after it.  An operation waits only for operations queued
  before it, so no two queues ever wait for each other.  A queue holds its
  names only while it has operations queued: an idle one costs nothing here.
- A thread stuck in a system call (a disk that stalls) holds only its
  queue: an operation running longer than :data:`STUCK_AFTER` makes the
  pool start another thread for the others, up to :data:`MAX_THREADS`.
- Output is not urgent.  A thread that ran something waits :data:`LINGER`
  for more before it sleeps, and output queued meanwhile does not wake it:
  typing's echoes are written a few times a second in one go, not by a
  thread woken for each.  A woken thread takes the GIL, and a keystroke
  that comes meanwhile waits for it: woken after every echo, the echo's
  p99 went from about 170 to 370 us; every 10 ms, 215; every 50 ms still
  215 (docs/performance.md).  Anything else, enough output to matter
  (:data:`~.logwriter.URGENT_BYTES`), or a waiter (:meth:`OpQueue.hurry`)
  wakes a thread at once; so does all output once a reexec has begun
  (:meth:`LogWriters.hurry_all`), whose pause would otherwise wait for what
  lingered (15-20 ms more with 1,000 sessions).

Without a trio run (a restore outside one, in tests) operations run where
they are queued.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Final

import structlog
import trio

log = structlog.get_logger("consoled.logpool")

#: Seconds after which a running operation counts as stuck (another thread starts).
STUCK_AFTER: Final = 0.25
#: Writer threads at most.
MAX_THREADS: Final = 8
#: Seconds a thread that ran something waits for more before it sleeps (so
#: also how late a file may be with a little output).
LINGER: Final = 0.25

#: What the event loop is told after an operation: calls to make there.
News = list[Callable[[], object]]


class _Sched(enum.Enum):
    """Where a queue is in the pool."""

    IDLE = "idle"  # nothing queued
    READY = "ready"  # in the ready queue
    RUNNING = "running"  # a thread runs one of its operations
    BLOCKED = "blocked"  # its next operation waits for another queue's


class OpQueue:
    """One file's operations, run in order by the pool's threads.

    One per session: it is kept small (slots, and lists made only when needed).
    A subclass says what the operations are: :meth:`run`, :meth:`news`,
    :attr:`stem` and :attr:`label`.

    Args:
        pool: the threads.
        directory: where the file's names are (queues on the same names wait
            for each other's earlier operations).
    """

    __slots__ = (
        "_barriers",
        "_count",
        "_dependents",
        "_done",
        "_idle",
        "_names",
        "_news_pending",
        "_sched",
        "closing",
        "directory",
        "ops",
        "pool",
    )

    def __init__(self, pool: LogWriters, directory: str) -> None:
        self.pool = pool
        self.directory = directory
        #: The operations queued and not started (None when there are none).
        self.ops: deque[object] | None = None
        self._sched = _Sched.IDLE
        #: Operations queued, and done, so far.
        self._count = 0
        self._done = 0
        #: Operations that wait for another queue's: the operation's number,
        #: the other queue, the number of its operations that must be done.
        self._barriers: list[tuple[int, OpQueue, int]] | None = None
        #: Queues waiting for this one.
        self._dependents: list[OpQueue] | None = None
        #: The names it holds (while it has operations queued).
        self._names: list[tuple[str, str]] | None = None
        #: No more operations will come but those that end it.
        self.closing = False
        #: News sent to the event loop that it has not run yet.
        self._news_pending = 0
        #: Waiters for operations to be done: the number, and the event.
        self._idle: list[tuple[int, trio.Event]] | None = None

    # --- what a subclass says ----------------------------------------------------------

    @property
    def label(self) -> str:
        """What it is, for log events."""
        raise NotImplementedError

    @property
    def stem(self) -> str:
        """The name of the file now (its operations hold it: see the module)."""
        raise NotImplementedError

    def run(self, op: object) -> None:
        """Run one operation (in a writer thread)."""
        raise NotImplementedError

    def news(self) -> News:
        """What to tell the event loop after an operation (the pool's lock held)."""
        raise NotImplementedError

    # --- the queue ------------------------------------------------------------------

    @property
    def lock(self) -> threading.Lock:
        """The pool's lock, which guards every queue."""
        return self.pool._lock

    @property
    def running(self) -> bool:
        """A thread runs one of its operations now."""
        return self._sched is _Sched.RUNNING

    @property
    def idle(self) -> bool:
        """Every operation queued is done, and the event loop knows what came of it."""
        return self._done == self._count and not self._news_pending

    def put(self, op: object, names: tuple[str, ...] = (), *, urgent: bool = True) -> bool:
        """Queue ``op``, an operation on the file's ``names`` if any.

        Args:
            urgent: wake a thread for it now (else a thread that lingers, or
                runs, takes it when it looks next: see the module).

        Returns:
            True if it ran here and now (outside a trio run).
        """
        pool = self.pool
        if not pool._bind():
            self._count += 1
            self.run(op)
            self._done += 1
            for fn in self.news():
                fn()
            return True
        with pool._lock:
            self._count += 1
            if self._sched is _Sched.IDLE:
                self._claim(self.stem)
            for stem in names:
                self._claim(stem)
            if self.ops is None:
                self.ops = deque()
            self.ops.append(op)
            if self._sched is _Sched.IDLE:
                pool._schedule(self)
            if urgent or pool._eager or not (pool._lingering or pool._running):
                self.hurry_locked()
        return False

    def last_queued(self) -> object:
        """The operation queued last and not started yet, None if there is none
        (call with the lock held: it may be added to until the lock is let go)."""
        return self.ops[-1] if self.ops else None

    def hurry(self) -> None:
        """Someone waits: what is queued is run now, not when a thread looks next."""
        with self.pool._lock:
            self.hurry_locked()

    def hurry_locked(self) -> None:
        """:meth:`hurry`, the lock held."""
        if self._sched is _Sched.READY:
            self.pool._wake_one()

    def _claim(self, stem: str) -> None:
        """The operation queued last is on the names of ``stem``: it waits for the
        operations the queue that used them last has queued (lock held)."""
        name = (self.directory, stem)
        names = self.pool._names
        before = names.get(name)
        if before is not None and before is not self and before._done < before._count:
            if self._barriers is None:
                self._barriers = []
            self._barriers.append((self._count, before, before._count))
        names[name] = self
        if self._names is None:
            self._names = []
        if name not in self._names:
            self._names.append(name)

    async def wait_idle(self) -> None:
        """Wait until every operation queued so far is done, and the event loop
        knows what came of it."""
        target = self._count
        while True:
            with self.pool._lock:
                if self._done >= target and not self._news_pending:
                    return
                event = trio.Event()
                if self._idle is None:
                    self._idle = []
                self._idle.append((target, event))
                self.hurry_locked()
            await event.wait()

    def _news(self) -> News:
        """After an operation: the job's news, and whether that makes a waiter idle (lock held)."""
        news = self.news()
        if not news and self._idle and any(self._done >= target for target, _ in self._idle):
            news.append(_nothing)  # the news that it is idle: see _deliver
        if news:
            self._news_pending += 1
        return news

    def _deliver(self, news: News) -> None:
        """What came of an operation, on the event loop."""
        count = self._count
        for fn in news:
            fn()
        with self.pool._lock:
            self._news_pending -= 1
            if self._count > count and self._idle:
                # What came of it queued more (files a rotation left, to close):
                # part of what the waiters wait for.
                self._idle = [(max(t, self._count), event) for t, event in self._idle]
            if self._news_pending:
                return
            waiting = self._idle or []
            self._idle = [(t, event) for t, event in waiting if self._done < t] or None
            for target, event in waiting:
                if self._done >= target:
                    event.set()


class LogWriters:
    """The writer threads of one daemon, shared by every session's log file."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        #: Queues whose next operation may run, in turn.
        self._ready: deque[OpQueue] = deque()
        self._threads = 0
        #: Threads waiting for work: for ever, or for LINGER.
        self._sleeping = 0
        self._lingering = 0
        #: What each busy thread runs, and since when (to see stuck ones).
        self._running: dict[int, tuple[OpQueue, float]] = {}
        #: The queue that last queued an operation on each log's names (by
        #: directory and stem).
        self._names: dict[tuple[str, str], OpQueue] = {}
        self._token: trio.lowlevel.TrioToken | None = None
        self._closed = False
        #: Every operation is urgent (a reexec is coming: see :meth:`hurry_all`).
        self._eager = False

    def _bind(self) -> bool:
        """Threads are used only inside a trio run (their results go back to it)."""
        if self._token is None:
            try:
                self._token = trio.lowlevel.current_trio_token()
            except RuntimeError:
                return False
        return True

    def post(self, fn: Callable[[], object]) -> None:
        """Run ``fn`` on the event loop (from a writer thread); now, outside a trio run."""
        if self._token is None:
            fn()
            return
        with contextlib.suppress(trio.RunFinishedError):  # done: nothing waits for it
            self._token.run_sync_soon(fn)

    def hurry_all(self, eager: bool = True) -> None:
        """Run what is queued now, and (``eager``) every operation as it comes
        from now on: a reexec's pause then waits for no output that lingered."""
        with self._lock:
            self._eager = eager
            if eager and self._ready:
                self._wake.notify_all()

    def stuck(self) -> list[OpQueue]:
        """The queues whose operation has run longer than :data:`STUCK_AFTER`."""
        now = time.monotonic()
        with self._lock:
            return [q for q, since in self._running.values() if now - since > STUCK_AFTER]

    def close(self, timeout: float) -> bool:
        """Let the threads finish what is queued, for at most ``timeout`` seconds.

        Returns:
            True if everything queued was done.
        """
        deadline = time.monotonic() + timeout
        with self._lock:
            self._closed = True
            self._wake.notify_all()
            while self._ready or self._running:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._wake.wait(min(left, 0.05))
        return True

    # --- scheduling (the lock held) ---------------------------------------------------

    def _schedule(self, queue: OpQueue) -> None:
        """``queue`` is idle or blocked: make it ready if its next operation may run.

        Wakes no thread: a thread that finished an operation looks next
        itself, and :meth:`OpQueue.put` decides for a new one.
        """
        if not queue.ops:
            queue.ops = None
            queue._sched = _Sched.IDLE
            return
        if queue._barriers is not None:
            following = queue._done + 1
            barriers = queue._barriers
            waits = [(q, n) for k, q, n in barriers if k <= following and q._done < n]
            queue._barriers = [(k, q, n) for k, q, n in barriers if q._done < n] or None
            if waits:
                queue._sched = _Sched.BLOCKED
                for before, _ in waits:
                    if before._dependents is None:
                        before._dependents = []
                    if queue not in before._dependents:
                        before._dependents.append(queue)
                return
        queue._sched = _Sched.READY
        self._ready.append(queue)

    def _wake_one(self) -> None:
        """A thread takes the ready queue now: one that waits, else a new one if
        none exists or all are stuck (lock held)."""
        if self._sleeping or self._lingering:
            self._wake.notify()
        elif self._threads < MAX_THREADS and (self._threads == 0 or self._all_stuck()):
            self._start_thread()

    def _all_stuck(self) -> bool:
        now = time.monotonic()
        return len(self._running) >= self._threads and all(
            now - since > STUCK_AFTER for _, since in self._running.values()
        )

    def _start_thread(self) -> None:
        thread = threading.Thread(target=self._work, name="consoled-logs", daemon=True)
        try:
            thread.start()
        except RuntimeError as exc:  # out of threads: the ones running will get to it
            log.error("logwriter.thread_failed", error=str(exc))
            return
        self._threads += 1

    def _finished(self, queue: OpQueue) -> News:
        """``queue``'s operation is done: what runs next, and what to tell the event loop."""
        queue._done += 1
        self._schedule(queue)
        dependents, queue._dependents = queue._dependents, None
        for waiting in dependents or ():
            if waiting._sched is _Sched.BLOCKED:
                self._schedule(waiting)
        if queue._sched is _Sched.IDLE and queue._names:
            for name in queue._names:  # idle: nobody need wait for it
                if self._names.get(name) is queue:
                    del self._names[name]
            queue._names = None
        return queue._news()

    # --- in the threads -----------------------------------------------------------

    def _work(self) -> None:
        me = threading.get_ident()
        linger = False
        while True:
            with self._lock:
                while not self._ready:
                    if self._closed:
                        self._threads -= 1
                        return
                    if linger:  # more may come soon, and not wake us
                        self._lingering += 1
                        self._wake.wait(LINGER)
                        self._lingering -= 1
                        linger = False
                    else:
                        self._sleeping += 1
                        self._wake.wait()
                        self._sleeping -= 1
                queue = self._ready.popleft()
                assert queue.ops
                op = queue.ops.popleft()
                queue._sched = _Sched.RUNNING
                self._running[me] = (queue, time.monotonic())
            try:
                queue.run(op)
            except Exception:  # a bug: it costs this operation, never the thread
                log.exception("logwriter.failed", queue=queue.label)
            linger = True
            with self._lock:
                del self._running[me]
                news = self._finished(queue)
            if news:
                self.post(functools.partial(queue._deliver, news))


def _nothing() -> None:
    pass
