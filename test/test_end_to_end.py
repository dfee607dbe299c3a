"""
End to end: the whole stack started from ``teleop_launch.yaml`` through ``telesurgery-launch``.

Each test reads like a launch test: start the launch, wait until the arm is under control
(safety state NOMINAL or DEGRADED, feedback flowing), assert while it runs, then stop it and
assert how every process ended. The probe node in the test process watches the patient-side and
console-side topics. Timing bounds are generous (two loaded cores): the measured figures are
printed, never asserted tightly.
"""
import json
import math
import os
import signal
import sys
import time

from geometry_msgs.msg import PoseStamped
from harness import alive, pids, wait_for
from mcap.reader import make_reader
import numpy as np
import pytest
from std_msgs.msg import String
from std_srvs.srv import SetBool

from telesurgery_ros.core import contract
from telesurgery_ros.core.contract import SafetyState, SafetyStatus
from telesurgery_ros.rosutil import SAFETY_QOS, stamp_to_sec, STREAM_QOS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_FILE = os.path.join(ROOT, 'launch', 'teleop_launch.yaml')
NODES = ('master_console', 'network_relay', 'slave_controller', 'safety_watchdog')
TOPICS = contract.arm_topics()
MEASURED = TOPICS['measured_cp']
COMMAND = TOPICS['servo_cp']
ECHO = contract.console_topic(TOPICS['setpoint_cp'])
STATE = contract.SAFETY_STATE_TOPIC
READY_TIMEOUT = 60.0        # s: four nodes starting on two loaded cores
_never_ready = []           # once the stack failed to come up, later tests fail at once

pytestmark = pytest.mark.ros


def state_of(probe):
    msg = probe.latest(STATE)
    return None if msg is None else SafetyStatus.decode(msg.data).state


class Stack:
    """The launch under test and the probe watching it."""

    def __init__(self, launcher, probe, commands=False, **arguments):
        if _never_ready:
            pytest.fail(f'the stack did not come up in an earlier test: {_never_ready[0]}')
        probe.record(String, STATE, SAFETY_QOS)
        probe.record(PoseStamped, MEASURED, STREAM_QOS)
        if commands:        # 500 Hz + 200 Hz of Python callbacks: only where needed
            probe.record(PoseStamped, COMMAND, STREAM_QOS)
            probe.record(PoseStamped, ECHO, STREAM_QOS)
        self.probe = probe
        argv = [sys.executable, '-m', 'telesurgery_ros.launch_runner', '--embedded',
                LAUNCH_FILE, *[f'{k}:={v}' for k, v in arguments.items()]]
        self.runner = launcher.start_argv('launch', argv)
        started = time.monotonic()
        try:
            wait_for(lambda: self._ready() or not self.runner.running(), READY_TIMEOUT,
                     interval=0.1, what='NOMINAL/DEGRADED with feedback flowing')
            assert self.runner.running(), \
                f'the launch ended early:\n{self.runner.output()[-3000:]}'
        except AssertionError as exc:
            last = probe.latest(STATE)
            _never_ready.append(f'{arguments}: {exc}; last safety state: '
                                f'{last.data if last else None}')
            raise AssertionError(_never_ready[-1]) from None
        self.ready_after = time.monotonic() - started
        self.pids = pids(self.runner)
        assert sorted(self.pids) == sorted(NODES)
        print(f'stack {arguments} ready after {self.ready_after:.1f} s')

    def _ready(self):
        state = state_of(self.probe)   # DEGRADED too: a loaded machine may run the loop late
        return state is not None and state.allows_motion and len(
            self.probe.messages(MEASURED)) > 20

    def measured_positions(self, since):
        return np.array([(m.pose.position.x, m.pose.position.y, m.pose.position.z)
                         for t, m in self.probe.timed(MEASURED) if t >= since])

    def tracking_errors(self, since):
        """Each measured_cp against the servo_cp received last before it (receive time)."""
        commands = [(t, m.pose.position) for t, m in self.probe.timed(COMMAND) if t >= since]
        errors = []
        i = -1
        for t, m in self.probe.timed(MEASURED):
            if t < since:
                continue
            while i + 1 < len(commands) and commands[i + 1][0] <= t:
                i += 1
            if i >= 0:
                c, p = commands[i][1], m.pose.position
                errors.append(math.dist((c.x, c.y, c.z), (p.x, p.y, p.z)))
        return np.array(errors)

    def round_trips(self, since):
        """Console-side RTT from the first echo of each command stamp (s)."""
        rtts, last = [], None
        for t_recv, msg in self.probe.timed(ECHO):
            stamp = stamp_to_sec(msg.header.stamp)
            if t_recv < since or (last is not None and stamp <= last):
                continue
            last = stamp
            rtts.append(time.time() - (time.monotonic() - t_recv) - stamp)
        return np.array(rtts)

    def wait_state(self, state, timeout, what=None):
        started = time.monotonic()
        wait_for(lambda: state_of(self.probe) is state, timeout, interval=0.02,
                 what=what or f'safety state {state.name}')
        return time.monotonic() - started

    def shutdown(self):
        """Ctrl-C the launch; return its exit code after checking every node is gone."""
        self.runner.send(signal.SIGINT)
        code = self.runner.wait(60)
        assert code is not None, 'the launch did not stop within 60 s'
        assert not [name for name, pid in self.pids.items() if alive(pid)]
        return code


@pytest.mark.parametrize('profile, rtt_bounds', [
    ('lan', (0.0, 0.1)),
    ('rome_beijing_2024', (0.12, 0.6)),
])
def test_arm_follows_the_scripted_motion_then_shuts_down_cleanly(
        launcher, probe, profile, rtt_bounds):
    stack = Stack(launcher, probe, commands=True, profile=profile, seed=1)
    since = time.monotonic()
    time.sleep(5.0)
    positions = stack.measured_positions(since)
    errors = stack.tracking_errors(since)
    rtts = stack.round_trips(since)
    assert state_of(probe) in (SafetyState.NOMINAL, SafetyState.DEGRADED)
    travel = float(np.ptp(positions[:, 0])) if len(positions) else 0.0
    rms = float(np.sqrt(np.mean(errors ** 2))) if errors.size else math.nan
    p50 = float(np.median(rtts)) if rtts.size else math.nan
    print(f'{profile}: {len(positions)} feedback samples, x travel {travel * 1e3:.1f} mm, '
          f'tracking RMS {rms * 1e3:.2f} mm max {errors.max() * 1e3:.2f} mm, '
          f'RTT p50 {p50 * 1e3:.1f} ms over {rtts.size} round trips')
    assert travel > 0.01, 'the arm did not follow the 20 mm circle'
    assert rms < 0.005
    assert rtt_bounds[0] <= p50 <= rtt_bounds[1]

    assert stack.shutdown() == 0, stack.runner.output()[-3000:]
    out = stack.runner.output()
    for name in NODES:
        assert f'[{name}] exited: exit code 0' in out


def test_relay_blackout_holds_then_recovers_after_realignment(launcher, probe):
    stack = Stack(launcher, probe, profile='lan')
    cut = probe.call(SetBool, contract.BLACKOUT_SERVICE, SetBool.Request(data=True))
    assert cut.success, cut.message
    took = stack.wait_state(SafetyState.HOLD, 10.0, 'HOLD after the blackout')
    print(f'HOLD {took * 1e3:.0f} ms after the blackout call: '
          f'{probe.latest(STATE).data}')
    time.sleep(0.3)
    held = stack.measured_positions(time.monotonic() - 0.2)
    time.sleep(1.0)
    later = stack.measured_positions(time.monotonic() - 0.2)
    assert len(held) and len(later), 'no feedback on the patient side during the blackout'
    drift = float(np.linalg.norm(later[-1] - held[0]))
    print(f'arm drift during 1 s of blackout: {drift * 1e3:.3f} mm')
    assert drift < 0.001
    restored = probe.call(SetBool, contract.BLACKOUT_SERVICE, SetBool.Request(data=False))
    assert restored.success, restored.message
    took = stack.wait_state(SafetyState.NOMINAL, 45.0, 'NOMINAL after re-alignment')
    print(f'NOMINAL again {took:.1f} s after the link came back')
    assert stack.shutdown() == 0


def test_killed_watchdog_leaves_the_slave_holding(launcher, probe):
    stack = Stack(launcher, probe, profile='lan')
    os.kill(stack.pids['safety_watchdog'], signal.SIGKILL)
    wait_for(lambda: '[safety_watchdog] exited: killed by SIGKILL (on its own)'
             in stack.runner.output(), 10, what='the runner to report the killed watchdog')
    time.sleep(1.0)       # the slave holds after SAFETY_SILENCE_TIMEOUT without a state
    first = stack.measured_positions(time.monotonic() - 0.5)
    time.sleep(1.0)
    last = stack.measured_positions(time.monotonic() - 0.5)
    assert len(first) and len(last), 'the slave stopped publishing feedback'
    drift = float(np.linalg.norm(last[-1] - first[0]))
    print(f'arm drift over 1 s without a watchdog: {drift * 1e3:.3f} mm '
          '(the console keeps commanding a 20 mm circle)')
    assert drift < 0.001
    others = [n for n in NODES if n != 'safety_watchdog']
    assert all(alive(stack.pids[n]) for n in others)
    assert stack.shutdown() == 1          # one node did not end cleanly: the runner says so
    assert 'not clean: safety_watchdog' in stack.runner.output()


def test_killed_slave_makes_the_watchdog_estop(launcher, probe):
    stack = Stack(launcher, probe, profile='lan')
    os.kill(stack.pids['slave_controller'], signal.SIGKILL)
    took = stack.wait_state(SafetyState.ESTOP, 10.0, 'ESTOP after the slave died')
    print(f'ESTOP {took * 1e3:.0f} ms after the slave was killed: {probe.latest(STATE).data}')
    time.sleep(0.5)
    assert state_of(probe) is SafetyState.ESTOP, 'ESTOP must stay latched'
    assert stack.shutdown() == 1
    out = stack.runner.output()
    assert '[slave_controller] exited: killed by SIGKILL (on its own)' in out
    for name in ('master_console', 'network_relay', 'safety_watchdog'):
        assert f'[{name}] exited: exit code 0' in out


# --- make demo ---------------------------------------------------------------------------

def test_demo_figures_from_known_messages():
    """The demo's figures on hand-made input (pure logic, no ROS)."""
    from telesurgery_ros.demo import RunMetrics, verdict
    metrics = RunMetrics(start=100.0)
    metrics.on_safety('HOLD: waiting for commands', 100.0)
    metrics.on_command((0.0, 0.0, -0.12), 100.1)
    metrics.on_measured((0.0, 0.0, -0.11), 100.2)          # HOLD: not counted
    metrics.on_safety('NOMINAL', 100.3)
    metrics.on_safety('NOMINAL', 100.32)                   # no transition
    for i in range(10):
        metrics.on_command((0.001 * i, 0.0, -0.12), 101.0 + i * 0.01)
        metrics.on_measured((0.001 * i, 0.003, -0.12), 101.005 + i * 0.01)
        metrics.on_echo(101.0 + i * 0.01, 101.135 + i * 0.01)
        metrics.on_echo(101.0 + i * 0.01, 101.2 + i * 0.01)   # repeated stamp: ignored
    forward = {'dropped_loss': '2', 'dropped_outage': '1', 'delay_p50_ms': '67.5'}
    backward = {'dropped_loss': '1', 'messages_in': '9'}
    metrics.on_stats([('network_relay: forward', forward),
                      ('network_relay: backward', backward)])
    summary = metrics.summary()
    assert summary['tracking_error']['samples'] == 10
    assert math.isclose(summary['tracking_error']['rms_m'], 0.003)
    assert math.isclose(summary['rtt_ms']['p50'], 135.0, abs_tol=1e-6)
    assert summary['rtt_ms']['samples'] == 10
    assert summary['messages_dropped'] == {'forward': 3, 'backward': 1, 'total': 4}
    assert [(e['from'], e['to']) for e in summary['safety_events']] == [
        (None, 'HOLD'), ('HOLD', 'NOMINAL')]
    assert verdict(summary, [], True, 0.005) == []
    metrics.on_safety('ESTOP: operator', 102.0)
    reasons = verdict(metrics.summary(), ['slave_controller'], True, 0.002)
    assert any('ESTOP' in r for r in reasons)
    assert any('slave_controller' in r for r in reasons)
    assert any('tracking error RMS 3.00 mm' in r for r in reasons)


def test_demo_records_mcap_and_writes_the_report(launcher, tmp_path):
    if _never_ready:
        pytest.fail(f'the stack did not come up in an earlier test: {_never_ready[0]}')
    demo = launcher.start_argv('demo', [
        sys.executable, '-m', 'telesurgery_ros.demo', '--duration', '4', '--profile', 'lan',
        '--runs-dir', str(tmp_path), '--ready-timeout', str(READY_TIMEOUT)])
    code = demo.wait(READY_TIMEOUT + 90)
    assert code is not None, 'the demo did not finish'
    out = demo.output()
    assert '--- summary ---' in out and 'RTT ' in out and 'tracking error' in out
    (run_dir,) = list(tmp_path.iterdir())
    report = json.load(open(run_dir / 'report.json'))
    print(f"demo: exit {code}, sound {report['sound']} {report['problems']}, "
          f"RTT p50 {report['rtt_ms']['p50']} ms, tracking {report['tracking_error']}")
    assert code == (0 if report['sound'] else 1)
    for name in ('path.png', 'latency.png', 'safety.png', 'launch.log'):
        assert (run_dir / name).stat().st_size > 0
    with open(run_dir / 'run.mcap', 'rb') as handle:
        summary = make_reader(handle).get_summary()
    counts = {summary.channels[cid].topic: n
              for cid, n in summary.statistics.channel_message_counts.items()}
    print(f'recorded: {counts}')
    for topic in ('/console/psm1/servo_cp', '/psm1/servo_cp', '/psm1/measured_cp',
                  '/console/psm1/measured_cp', '/safety/state', '/network/stats'):
        assert counts.get(topic, 0) > 0, topic
    assert counts == report['recorded_messages']
    for name in NODES:
        assert f'[{name}] exited: ' in out
