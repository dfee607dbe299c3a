"""
The arm's loop never waits for a peer: each non-control process is frozen in turn.

The whole stack (console, relay under rome_beijing_2024, slave, watchdog) plus a monitoring
tool (plain rclpy, the middleware's default transports, shared memory included) runs; the
monitoring tool, the relay and the console are each stopped with SIGSTOP for 1.5 s, then
continued. Printed per freeze: the slave's feedback gap as a probe saw it, the loop rate and
physics rate the slave reported for the frozen window, and the watchdog's transitions.
Asserted: the slave kept running through every freeze, no ESTOP, and a HOLD (then NOMINAL
again) where commands stopped. The watchdog's repeated-faults latch (3 HOLDs in 10 s ->
ESTOP, a policy on top of the HOLDs) is set out of reach: on this shared 2-core machine the
CPU burst of a resumed process can itself cost a HOLD, and the question here is whether the
watchdog ever takes a live slave for dead. Before the fix (telesurgery_ros/transport.py), a
frozen relay could stall the watchdog's publish() in Fast DDS's shared-memory transport, and
the watchdog latched 'ESTOP: slave controller dead' for a slave that was alive.
"""
import os
import signal
import sys
import time

from diagnostic_msgs.msg import DiagnosticArray
from harness import wait_for
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from telesurgery_ros.core import contract
from telesurgery_ros.rosutil import DIAGNOSTICS_QOS, SAFETY_QOS, STREAM_QOS

FREEZE = 1.5
JS = contract.arm_topics()['measured_js']
STATE = contract.SAFETY_STATE_TOPIC
LOOP = 'slave_controller: control loop'


def states(probe, since):
    return [(t, m.data) for t, m in probe.timed(STATE) if t >= since]


def transitions(probe, since):
    out, last = [], None
    for t, text in states(probe, since):
        name = text.split(':')[0]
        if name != last:
            out.append((t, text))
            last = name
    return out


def moving(text):
    """NOMINAL or DEGRADED: the arm follows (DEGRADED: slower; a loaded machine gets there)."""
    return text.startswith(('NOMINAL', 'DEGRADED'))


def operating_for(probe, seconds):
    timed = probe.timed(STATE)
    if not timed or not moving(timed[-1][1].data):
        return False
    since = [t for t, m in timed if not moving(m.data)]
    return time.monotonic() - max(since, default=0.0) >= seconds


def loop_reports(probe, start, end):
    out = []
    for t, msg in probe.timed('/diagnostics'):
        if start <= t <= end:
            for status in msg.status:
                if status.name == LOOP:
                    out.append({kv.key: kv.value for kv in status.values})
    return out


def test_freezing_each_peer_never_stalls_the_arm_loop(launcher, probe):
    probe.record(JointState, JS, STREAM_QOS, raw=True)
    probe.record(String, STATE, SAFETY_QOS)
    probe.record(DiagnosticArray, '/diagnostics', DIAGNOSTICS_QOS)
    slave = launcher.start('slave_controller')
    relay = launcher.start('network_relay')
    console = launcher.start('master_console')
    wait_for(lambda: probe.latest(JS) is not None, 60.0, what='the slave running')
    launcher.start('safety_watchdog', params={'faults.count': 1000})
    tool = launcher.start_argv('monitoring_tool', [
        sys.executable, os.path.join(os.path.dirname(__file__), 'monitoring_tool.py')])
    wait_for(lambda: any('monitoring' in line for line in tool.lines), 30.0,
             what='the monitoring tool subscribed')
    wait_for(lambda: operating_for(probe, 2.0), 90.0, what='NOMINAL or DEGRADED for 2 s')
    diag = loop_reports(probe, 0.0, time.monotonic())[-1]
    print(f"\nslave control thread: {diag['scheduling']}, executor and DDS receive threads: "
          f"{diag['executor_scheduling']} (the loop's deadlines are kept without real-time "
          'scheduling too; it only narrows the jitter)')
    if diag['realtime'] == 'True':      # granted here: the executor got its default as well
        assert diag['executor_scheduling'] == 'SCHED_FIFO 40'

    results = {}
    started = time.monotonic()
    for name, proc, expect_hold in (('monitoring tool', tool, False), ('relay', relay, True),
                                    ('console', console, True)):
        wait_for(lambda: operating_for(probe, 1.0), 30.0,
                 what=f'NOMINAL or DEGRADED before freezing the {name}')
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGSTOP)
        time.sleep(FREEZE)
        os.kill(proc.pid, signal.SIGCONT)
        t1 = time.monotonic()
        if expect_hold:
            wait_for(lambda: operating_for(probe, 0.5), 30.0,
                     what=f'NOMINAL or DEGRADED again after the {name} was frozen')
        else:
            time.sleep(2.0)
        arrivals = [t for t, _m in probe.timed(JS) if t0 - 0.1 <= t <= t1 + 0.2]
        gap = max((b - a for a, b in zip(arrivals, arrivals[1:])), default=float('inf'))
        reports = loop_reports(probe, t0 + 0.5, t1 + 0.6)
        changes = transitions(probe, t0)
        results[name] = (gap, changes)
        print(f'{name} frozen {FREEZE:g} s: slave feedback max gap {gap * 1e3:.0f} ms; slave '
              'loop reports over the freeze: '
              + ', '.join(f"{float(r['rate_hz']):.0f} Hz loop / "
                          f"{float(r['physics_rate_hz']):.0f} Hz physics" for r in reports)
              + '; watchdog: ' + ' -> '.join(
                  f'{t - t0:+.2f} s {text}' for t, text in changes))
        assert reports, f'no control-loop report from the slave while the {name} was frozen'
        assert slave.running()
    print('all transitions: ' + ' -> '.join(f'{t - started:+.2f} s {text}'
                                            for t, text in transitions(probe, 0.0)))
    for name, (gap, changes) in results.items():
        assert gap < 1.0, f'the slave stopped publishing for {gap:.2f} s while the {name} was ' \
            'frozen'
        assert not any(text.startswith('ESTOP') for _t, text in changes), \
            f'ESTOP while the {name} was frozen: {changes}'
    for name in ('relay', 'console'):
        names = [text.split(':')[0] for _t, text in results[name][1]]
        assert 'HOLD' in names and moving(names[-1]), (name, results[name][1])
