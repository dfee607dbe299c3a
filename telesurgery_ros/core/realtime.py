"""
Real-time scheduling of one thread, and a loop that sleeps to absolute deadlines; no ROS.

:func:`make_realtime` gives the calling thread ``SCHED_FIFO`` at a priority, as ros2_control
does for its control thread; where the system refuses (no ``CAP_SYS_NICE``, no RT budget),
the thread keeps normal scheduling and the caller logs one warning. :class:`Schedule`
describes what is in force, for ``/diagnostics``.

:class:`DeadlineClock` paces a periodic loop on absolute deadlines ``start + k * period``
(no drift: a late tick does not push the next ones back); when a tick is more than a period
late the missed deadlines are skipped and counted, and the caller catches up on its own
(the slave steps the physics as often as the elapsed time asks).
"""
import ctypes
from dataclasses import dataclass
import os
import sys
import threading
import time

# The highest SCHED_FIFO priority we use: kernel threads (migration, watchdog) stay above.
MAX_PRIORITY = 98

# How long one Python thread may keep the GIL while another waits for it (Python's default
# is 5 ms). A real-time thread that wakes on time still waits for the GIL; at 0.5 ms the
# slave's worst jitter p99 sat at the interval itself (0.4-0.7 ms), at 0.1 ms it fell to
# ~0.4 ms and the overrun fraction from ~0.2 % to ~0.03 %, for no measurable CPU
# (alternated runs in doc/benchmarks.md).
GIL_SWITCH_INTERVAL_S = 0.0001


@dataclass(frozen=True)
class Schedule:
    """The scheduling of one thread: what was asked and what is in force."""

    requested: int            # requested SCHED_FIFO priority (0: normal scheduling asked)
    policy: str               # 'SCHED_FIFO' or 'SCHED_OTHER'
    priority: int             # in force (0 for SCHED_OTHER)
    refused: str = ''         # why SCHED_FIFO was not applied ('' if granted or not asked)

    @property
    def realtime(self):
        return self.policy == 'SCHED_FIFO'

    def describe(self):
        """One line for logs and /diagnostics, e.g. ``'SCHED_FIFO 50'``."""
        if self.realtime:
            return f'{self.policy} {self.priority}'
        if self.refused:
            return f'SCHED_OTHER (SCHED_FIFO {self.requested} refused: {self.refused})'
        return 'SCHED_OTHER (realtime_priority 0)'


def shorten_gil_switch():
    """Let a waiting thread take the GIL after :data:`GIL_SWITCH_INTERVAL_S` (process-wide)."""
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


def name_thread(name):
    """Give the calling thread its OS name (``top -H``, ``/proc/<pid>/task``); best effort."""
    try:
        libc = ctypes.CDLL('libc.so.6', use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)      # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def make_realtime(priority):
    """
    Put the calling thread under ``SCHED_FIFO`` at ``priority`` (1..98); return its Schedule.

    ``priority <= 0`` asks for normal scheduling. Never raises: a refusal is reported in
    :attr:`Schedule.refused`.
    """
    if priority <= 0:
        return Schedule(priority, 'SCHED_OTHER', 0)
    priority = min(int(priority), MAX_PRIORITY)
    try:
        # pid 0 is the calling thread on Linux (scheduling is per thread).
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return Schedule(priority, 'SCHED_OTHER', 0, reason or type(exc).__name__)
    return current_schedule(priority)


def thread_ids():
    """Return the kernel thread ids of this process (``/proc/self/task``), [] if unknown."""
    try:
        return sorted(int(t) for t in os.listdir('/proc/self/task'))
    except OSError:
        return []


# Fast DDS names its threads 'dds.<role>...' (receive 'dds.udp.<port>', events 'dds.ev.0',
# asynchronous writers 'dds.asyn...'). The process's other early threads (tracing, logging,
# the OpenBLAS worker, rclpy's signal thread) are off the message path and keep theirs.
DDS_THREAD_PREFIX = 'dds.'


def thread_name(tid):
    """Return the OS name of thread ``tid`` of this process ('' if it has ended)."""
    try:
        with open(f'/proc/self/task/{tid}/comm') as f:
            return f.read().strip()
    except OSError:
        return ''


def make_receive_realtime(priority, prefix=DDS_THREAD_PREFIX):
    """
    Put the calling thread and the process's DDS threads under SCHED_FIFO ``priority``.

    Return ``(Schedule of the calling thread, number of threads set)``. Meant for a node's
    executor thread, called once the node exists: the DDS threads that receive its
    messages (named ``prefix...``) were started with the participant and would otherwise
    wait behind every real-time thread of the machine (a message is only as prompt as the
    thread that takes it off the socket). Threads already under a real-time policy keep
    theirs; threads started later by the caller (the executor's) inherit its policy.
    ``priority <= 0`` changes nothing. Never raises: a refusal is reported in
    :attr:`Schedule.refused` and leaves every thread as it was.
    """
    schedule = make_realtime(priority)
    if not schedule.realtime:
        return schedule, 0
    me = threading.get_native_id()
    done = 1
    for tid in thread_ids():
        if tid == me or not thread_name(tid).startswith(prefix):
            continue
        try:
            if os.sched_getscheduler(tid) != os.SCHED_OTHER:
                continue
            os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(schedule.priority))
        except OSError:
            continue        # the thread ended meanwhile, or the kernel refused this one
        done += 1
    return schedule, done


def current_schedule(requested=0):
    """Return the Schedule of the calling thread as the kernel reports it."""
    try:
        policy = os.sched_getscheduler(0)
        priority = os.sched_getparam(0).sched_priority
    except (OSError, AttributeError):
        return Schedule(requested, 'SCHED_OTHER', 0, 'unknown')
    if policy == getattr(os, 'SCHED_FIFO', -1):
        return Schedule(requested, 'SCHED_FIFO', priority)
    return Schedule(requested, 'SCHED_OTHER', 0, '' if requested <= 0 else 'not in force')


class DeadlineClock:
    """Absolute deadlines ``start + k * period`` for a periodic loop (monotonic seconds)."""

    def __init__(self, period, clock=time.monotonic, start=None):
        self.period = float(period)
        self.clock = clock
        self.start = clock() if start is None else start
        self.index = 0               # the deadline waited for is start + index * period
        self.skipped = 0             # deadlines missed by more than a period

    @property
    def deadline(self):
        return self.start + self.index * self.period

    def advance(self, now):
        """
        Move to the next deadline after a tick that ran at ``now``; return the wait (s).

        Deadlines already more than one period in the past are skipped (counted in
        :attr:`skipped`); the wait is 0 when the next deadline has passed.
        """
        self.index += 1
        late = now - self.deadline
        if late > self.period:
            missed = int(late // self.period)
            self.index += missed
            self.skipped += missed
        return max(0.0, self.deadline - now)


class PeriodicThread:
    """
    Run ``tick(now)`` every ``period`` seconds on absolute deadlines in its own thread.

    The thread asks for ``SCHED_FIFO`` at ``priority`` first (see :func:`make_realtime`);
    :attr:`schedule` tells what it got. ``tick`` must not block; exceptions stop the loop and
    are kept in :attr:`error` (the owner reports them).
    """

    def __init__(self, name, period, tick, priority=0, clock=time.monotonic,
                 sleep=time.sleep):
        self.name = name
        self.period = period
        self._tick = tick
        self._priority = priority
        self._clock = clock
        self._sleep = sleep
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.schedule = None
        self.error = None
        self.clock = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self):
        self._thread.start()
        self._ready.wait(5.0)
        return self

    def stop(self, timeout=2.0):
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)

    @property
    def alive(self):
        return self._thread.is_alive()

    def _run(self):
        name_thread(self.name)
        self.schedule = make_realtime(self._priority)
        self.clock = DeadlineClock(self.period, self._clock)
        self._ready.set()
        clock, tick, stop, sleep = self.clock, self._tick, self._stop, self._sleep
        try:
            while not stop.is_set():
                now = self._clock()
                tick(now)
                wait = clock.advance(self._clock())
                if wait > 0.0:
                    sleep(wait)
        except Exception as exc:        # noqa: B902 - reported by the owner, never lost
            self.error = exc
