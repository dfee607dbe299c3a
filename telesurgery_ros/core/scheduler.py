"""
Release of delayed messages at their scheduled time, from one dedicated thread.

Messages wait in a heap ordered by release time (ties keep submission order). The release
thread sleeps on a condition variable until the earliest one is due, so a message leaves at
its own time, not on the next arrival or a coarse timer tick. When a message is already due
on submission and nothing is waiting or being delivered, it is delivered at once in the
caller's thread: the zero-delay path costs one function call.

Order: items due at the same time leave in submission order, and the immediate path is
taken only when nothing is waiting or being delivered, so a link whose release times never
decrease (``preserve_order``) delivers in exactly the order it was given.

Wake-up latency: a thread that sleeps until a time wakes up some tens of µs after it (the
kernel's timer, the thread switch, the GIL), so every delayed message would leave that much
late. The release thread measures that lateness on each of its timed wake-ups and tracks its
median (:attr:`ReleaseScheduler.lead`, at most ``max_lead``); it then wakes that much before
the next release time and releases what falls due within it. A message therefore leaves at
its time on average instead of always late, and never more than ``max_lead`` early.
``max_lead=0`` turns this off (never early, always late by the wake-up).

The release thread asks for ``SCHED_FIFO`` at ``priority`` (see
:func:`telesurgery_ros.core.realtime.make_realtime`); :attr:`ReleaseScheduler.schedule` tells
what it got.

No ROS here: ``deliver(item)`` is injected (the relay publishes from it) and so is the
monotonic ``clock``.
"""
import heapq
import itertools
import threading
import time

from telesurgery_ros.core.realtime import make_realtime, name_thread

MAX_LEAD = 2e-4          # s: the most a message may leave before its release time
LEAD_STEP = 2e-6         # s: how far one wake-up moves the median estimate of the lateness


class ReleaseScheduler:
    """A heap of ``(release_time, item)`` drained by one thread at the right times."""

    def __init__(self, deliver, clock=time.monotonic, on_error=None, priority=0,
                 max_lead=MAX_LEAD):
        """Create the scheduler; call :meth:`start` to run the release thread."""
        self._deliver = deliver
        self.max_lead = max(0.0, float(max_lead))
        self.lead = 0.0                  # s: the release thread wakes this much early
        self._priority = priority
        self.schedule = None
        self._clock = clock
        self._on_error = on_error
        self._heap = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._running = False
        self._delivering = False
        self._thread = None
        self.pending = {}                # key -> number of waiting items

    def start(self):
        self._running = True
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), name='relay-release',
                                        daemon=True)
        self._thread.start()
        ready.wait(5.0)
        return self

    def stop(self, timeout=2.0):
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def submit(self, release_time, item, key=None):
        """
        Deliver ``item`` at ``release_time`` (clock seconds); ``key`` groups pending counts.

        Return True if it was delivered at once in this thread.
        """
        with self._cond:
            immediate = (not self._heap and not self._delivering
                         and release_time - self.lead <= self._clock())
            if immediate:
                self._delivering = True
            else:
                heapq.heappush(self._heap, (release_time, next(self._seq), key, item))
                self.pending[key] = self.pending.get(key, 0) + 1
                if self._heap[0][3] is item:
                    self._cond.notify()
                return False
        try:
            self._safe_deliver(item)
        finally:
            with self._cond:
                self._delivering = False
                if self._heap:
                    self._cond.notify()
        return True

    def discard(self, predicate):
        """Remove the waiting items for which ``predicate(key, item)`` is true; return them."""
        with self._cond:
            kept, dropped = [], []
            for entry in self._heap:
                (dropped if predicate(entry[2], entry[3]) else kept).append(entry)
            heapq.heapify(kept)
            self._heap = kept
            for entry in dropped:
                self.pending[entry[2]] -= 1
            self._cond.notify()
        return [(entry[2], entry[3]) for entry in dropped]

    def _safe_deliver(self, item):
        try:
            self._deliver(item)
        except Exception as exc:    # noqa: B902 - one bad message must not stop the relay
            if self._on_error is not None:
                self._on_error(exc)

    def _run(self, ready):
        name_thread('relay-release')
        self.schedule = make_realtime(self._priority)
        ready.set()
        cond = self._cond
        clock = self._clock
        while True:
            with cond:
                while self._running:
                    if self._heap:
                        wake = self._heap[0][0] - self.lead
                        wait = wake - clock()
                        if wait <= 0.0 and not self._delivering:
                            break
                        if wait > 0.0:
                            if not cond.wait(wait):
                                self._learn(clock() - wake)
                        else:
                            cond.wait()        # the immediate path notifies when it is done
                    else:
                        cond.wait()
                if not self._running:
                    return
                due = []
                now = clock() + self.lead
                while self._heap and self._heap[0][0] <= now:
                    entry = heapq.heappop(self._heap)
                    self.pending[entry[2]] -= 1
                    due.append(entry[3])
                self._delivering = True
            try:
                for item in due:
                    self._safe_deliver(item)
            finally:
                with cond:
                    self._delivering = False

    def _learn(self, lateness):
        """Move :attr:`lead` one step towards the median lateness of the timed wake-ups."""
        if self.max_lead <= 0.0:
            return
        step = LEAD_STEP if lateness > self.lead else -LEAD_STEP
        self.lead = min(self.max_lead, max(0.0, self.lead + step))
