"""Real-time scheduling and absolute deadlines (core/realtime.py)."""
import threading

import pytest
from telesurgery_ros.core import realtime


def test_deadlines_are_absolute_and_missed_ones_are_skipped():
    clock = realtime.DeadlineClock(0.001, start=10.0)
    assert clock.advance(10.0002) == pytest.approx(0.0008)       # a tick costs 0.2 ms
    assert clock.advance(10.00115) == pytest.approx(0.00085)     # late wake-up: no drift
    assert clock.advance(10.0061) == 0.0 and clock.skipped == 3  # 3 deadlines missed
    assert clock.deadline == pytest.approx(10.006)


def test_real_time_scheduling_is_granted_or_refused_with_a_reason():
    got = []
    thread = threading.Thread(target=lambda: got.append(realtime.make_realtime(10)))
    thread.start()
    thread.join()
    schedule = got[0]
    print(f'SCHED_FIFO 10 asked: {schedule.describe()} (this test passes either way)')
    assert (schedule.realtime and schedule.priority == 10 and not schedule.refused) or (
        not schedule.realtime and schedule.refused)
    assert realtime.current_schedule().policy == 'SCHED_OTHER'   # only that thread changed
    assert realtime.make_realtime(0).describe() == 'SCHED_OTHER (realtime_priority 0)'
