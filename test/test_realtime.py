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


RECEIVE_SCRIPT = r"""
import json, os, threading
from telesurgery_ros.core import realtime
stop = threading.Event()
tids = {}
ready = {name: threading.Event() for name in ('dds.udp.1', 'other', 'loop', 'later')}
def idle(name, priority):
    realtime.name_thread(name)
    if priority:
        realtime.make_realtime(priority)
    tids[name] = threading.get_native_id()
    ready[name].set()
    stop.wait()
threads = [threading.Thread(target=idle, args=('dds.udp.1', 0)),
           threading.Thread(target=idle, args=('other', 0)),
           threading.Thread(target=idle, args=('loop', 30))]
for t in threads:
    t.start()
for name in ('dds.udp.1', 'other', 'loop'):
    ready[name].wait()
schedule, count = realtime.make_receive_realtime(20)
later = threading.Thread(target=idle, args=('later', 0))
later.start()
ready['later'].wait()
def policy(tid):
    return [os.sched_getscheduler(tid) == os.SCHED_FIFO, os.sched_getparam(tid).sched_priority]
print(json.dumps({'describe': schedule.describe(), 'realtime': schedule.realtime,
                  'count': count, **{name: policy(tid) for name, tid in tids.items()}}))
stop.set()
"""


def test_the_receive_threads_of_a_process_follow_its_executor_thread():
    """In a child process: its DDS threads join, other threads and real-time ones keep."""
    import json
    import subprocess
    import sys
    out = subprocess.run([sys.executable, '-c', RECEIVE_SCRIPT], capture_output=True,
                         text=True, timeout=30, check=True).stdout
    got = json.loads(out)
    print(f'make_receive_realtime(20): {got} (this test passes either way)')
    assert got['loop'] == ([True, 30] if got['realtime'] else [False, 0])
    assert got['other'] == [False, 0]                # not a DDS thread: left as it was
    if got['realtime']:
        assert got['describe'] == 'SCHED_FIFO 20' and got['count'] == 2    # itself + dds.*
        assert got['dds.udp.1'] == [True, 20] and got['later'] == [True, 20]
    else:
        assert 'refused' in got['describe'] and got['count'] == 0
        assert got['dds.udp.1'] == [False, 0] and got['later'] == [False, 0]
