"""
safety_watchdog as a process, against stand-in publishers in the test process.

The probe plays the relay (commands) and the slave (feedback, force, control-loop
diagnostics); every reaction is asserted on the real ``safety/state`` and ``/diagnostics``.
"""
import math
import subprocess
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, WrenchStamped
from harness import wait_for
import numpy as np
import pytest
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from telesurgery_ros.core import contract
from telesurgery_ros.rosutil import (
    diagnostic_array, diagnostic_status, DIAGNOSTICS_QOS, make_pose_stamped, SAFETY_QOS,
    sec_to_stamp, STREAM_QOS)

pytestmark = pytest.mark.ros

TOPICS = contract.arm_topics()
FRAME = contract.frames()['rcm']
HOME = list(contract.HOME_POSITION)
QUAT = list(contract.HOME_ORIENTATION)
STATE = contract.SAFETY_STATE_TOPIC


class Streamer:
    """Publishes commands (and optionally slave feedback) from the probe at a fixed rate."""

    def __init__(self, probe, rate=200.0, feedback=True):
        self.probe = probe
        self.period = 1.0 / rate
        self.command = list(HOME)
        self.measured = list(HOME)
        self.force = (0.0, 0.0, 0.0)
        self.sending = True
        self.feedback = feedback
        self.last_sent = None
        self.pub_cmd = probe.create_publisher(PoseStamped, TOPICS['servo_cp'], STREAM_QOS)
        if feedback:
            self.pub_js = probe.create_publisher(JointState, TOPICS['measured_js'], STREAM_QOS)
            self.pub_cp = probe.create_publisher(PoseStamped, TOPICS['measured_cp'],
                                                 STREAM_QOS)
            self.pub_cf = probe.create_publisher(WrenchStamped, TOPICS['measured_cf'],
                                                 STREAM_QOS)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self):
        return self.probe.get_clock().now().nanoseconds * 1e-9

    def send(self, position, stamp=None, quaternion=QUAT):
        """Publish one command now (stamp in seconds; default: now)."""
        stamp = self.now() if stamp is None else stamp
        self.pub_cmd.publish(make_pose_stamped(position, quaternion, FRAME,
                                               sec_to_stamp(stamp)))
        self.last_sent = time.monotonic()

    def _run(self):
        next_t = time.monotonic()
        while not self._stop.is_set():
            if self.sending:
                self.send(self.command)
            if self.feedback:
                stamp = self.probe.get_clock().now().to_msg()
                js = JointState(name=['j'], position=[0.0])
                js.header.stamp = stamp
                self.pub_js.publish(js)
                self.pub_cp.publish(make_pose_stamped(self.measured, QUAT, FRAME, stamp))
                w = WrenchStamped()
                w.header.stamp = stamp
                w.wrench.force.x, w.wrench.force.y, w.wrench.force.z = self.force
                self.pub_cf.publish(w)
            next_t += self.period
            time.sleep(max(0.0, next_t - time.monotonic()))

    def close(self):
        self._stop.set()
        self._thread.join(2.0)


def state(probe):
    msg = probe.latest(STATE)
    return None if msg is None else contract.SafetyStatus.decode(msg.data)


def wait_state(probe, name, timeout=10.0):
    """Wait until safety/state says ``name``; return the status."""
    return wait_for(lambda: (s := state(probe)) is not None and s.state.name == name and s,
                    timeout, what=f'safety/state {name} (last: {state(probe)})')


def watchdog_values(probe, check):
    """Key/values of the latest watchdog diagnostics status named ``check``."""
    for msg in reversed(probe.messages('/diagnostics')):
        for status in msg.status:
            if status.name == f'safety_watchdog: {check}':
                return {kv.key: kv.value for kv in status.values}
    return {}


def wait_value(probe, check, key, predicate, timeout=10.0):
    return wait_for(lambda: predicate(watchdog_values(probe, check).get(key)), timeout,
                    what=f'{check} {key} (last: {watchdog_values(probe, check).get(key)})')


@pytest.fixture
def watchdog(launcher, probe):
    probe.record(String, STATE, SAFETY_QOS)
    probe.record(DiagnosticArray, '/diagnostics', DIAGNOSTICS_QOS)
    launcher.start('safety_watchdog', params={'diagnostics_rate': 10.0, 'faults.count': 100})
    wait_state(probe, 'HOLD', timeout=20.0)
    streamer = Streamer(probe)
    yield streamer
    streamer.close()


def test_start_up_stale_invalid_and_realignment(watchdog, probe):
    assert state(probe).reason in ('waiting for commands', 'waiting for the slave '
                                   '(measured_js, measured_cp)') or state(probe).state.name
    wait_state(probe, 'NOMINAL')
    # the state is published at a fixed rate
    probe.clear(STATE)
    time.sleep(1.0)
    count = len(probe.messages(STATE))
    print(f'safety/state messages in 1 s: {count}')
    assert 30 <= count <= 80

    # commands stop -> HOLD
    watchdog.sending = False
    status = wait_state(probe, 'HOLD', timeout=5.0)
    reacted = time.monotonic() - watchdog.last_sent
    print(f'commands stop -> HOLD seen by the probe after {reacted * 1000:.1f} ms')
    assert status.reason.startswith('commands stale (')
    assert reacted < 1.0

    # back, re-anchored 10 mm away: stays HOLD until the command converges on the arm
    watchdog.command = [HOME[0] + 0.010, HOME[1], HOME[2]]
    watchdog.sending = True
    time.sleep(0.5)
    assert state(probe).state.name == 'HOLD'
    assert 'waiting for re-alignment' in state(probe).reason
    watchdog.command = list(HOME)
    wait_state(probe, 'NOMINAL')

    # each invalid command: HOLD, counted
    cases = [((math.nan, 0.0, -0.12), lambda: None, 'rejected_non_finite'),
             ((HOME[0] + 0.05, HOME[1], HOME[2]), lambda: None, 'rejected_jump'),
             (HOME, lambda: watchdog.now() - 1.0, 'rejected_stale_stamp'),
             (HOME, lambda: watchdog.now() + 1.0, 'rejected_future_stamp')]
    for position, stamp_of, key in cases:
        wait_state(probe, 'NOMINAL')
        time.sleep(0.2)     # a fresh diagnostics report
        before = int(watchdog_values(probe, 'command validity').get(key, '0'))
        watchdog.send(position, stamp_of())
        status = wait_state(probe, 'HOLD', timeout=5.0)
        print(f'{key}: {status.encode()}')
        assert 'invalid command rejected' in status.reason
        wait_value(probe, 'command validity', key, lambda v: v is not None and int(v) > before)
    wait_state(probe, 'NOMINAL')
    # feedback arrival rates are reported (the stand-in slave publishes at 200 Hz)
    wait_value(probe, 'slave health', 'measured_cp_rate_hz',
               lambda v: v is not None and float(v) > 0.0)
    rate = float(watchdog_values(probe, 'slave health')['measured_cp_rate_hz'])
    print(f'measured_cp rate seen by the watchdog: {rate:.0f} Hz')
    assert 50.0 < rate < 300.0


def test_estop_force_slave_dead_and_reset(watchdog, probe):
    wait_state(probe, 'NOMINAL')
    response = probe.call(Trigger, 'safety/reset')
    assert not response.success and 'nothing to reset' in response.message

    response = probe.call(Trigger, 'safety/estop')
    assert response.success
    assert wait_state(probe, 'ESTOP').reason.startswith('operator e-stop')
    time.sleep(0.3)
    assert state(probe).state.name == 'ESTOP'   # latched
    assert probe.call(Trigger, 'safety/reset').success
    wait_state(probe, 'NOMINAL')

    # force: warning, then the limit
    watchdog.force = (0.0, 0.0, 4.0)
    wait_state(probe, 'DEGRADED')
    watchdog.force = (0.0, 0.0, 6.0)
    assert 'contact force 6.00 N > limit 5.00 N' in wait_state(probe, 'ESTOP').reason
    response = probe.call(Trigger, 'safety/reset')
    print(f'reset during contact: {response.message}')
    assert not response.success and 'contact force' in response.message
    watchdog.force = (0.0, 0.0, 0.0)
    time.sleep(0.3)
    assert state(probe).state.name == 'ESTOP'
    assert probe.call(Trigger, 'safety/reset').success
    wait_state(probe, 'NOMINAL')

    # the slave goes silent: HOLD, then ESTOP
    watchdog.feedback = False
    status = wait_state(probe, 'ESTOP', timeout=5.0)
    assert status.reason.startswith('slave controller dead')
    response = probe.call(Trigger, 'safety/reset')
    print(f'reset while the slave is down: {response.message}')
    assert not response.success and 'slave controller down' in response.message
    watchdog.feedback = True
    time.sleep(0.3)
    assert probe.call(Trigger, 'safety/reset').success
    wait_state(probe, 'NOMINAL')


def test_network_stats_and_slave_loop_diagnostics(watchdog, probe):
    wait_state(probe, 'NOMINAL')
    stats = probe.create_publisher(DiagnosticArray, 'network/stats', DIAGNOSTICS_QOS)
    diag = probe.create_publisher(DiagnosticArray, '/diagnostics', DIAGNOSTICS_QOS)

    def publish_stats(p99_ms, loss):
        stats.publish(diagnostic_array(probe, [
            diagnostic_status(f'network_relay: {d}', 'network_relay', 'OK', 'test',
                              {'delay_p50_ms': p99_ms - 2.0, 'delay_p99_ms': p99_ms,
                               'loss_ratio': loss}) for d in ('forward', 'backward')]))

    publish_stats(72.0, 0.001)      # rome_beijing_2024-like: NOMINAL
    wait_value(probe, 'network', 'rtt_estimate_s', lambda v: v is not None)
    assert state(probe).state.name == 'NOMINAL'
    publish_stats(120.0, 0.001)
    assert 'round trip 0.240 s > 0.200 s' in wait_state(probe, 'DEGRADED').reason
    publish_stats(200.0, 0.001)
    assert 'round trip 0.400 s > 0.330 s' in wait_state(probe, 'HOLD').reason
    publish_stats(72.0, 0.001)
    wait_state(probe, 'NOMINAL')

    def publish_loop(level, message):
        diag.publish(diagnostic_array(probe, [
            diagnostic_status('slave_controller: control loop', 'psm1', level, message,
                              {'rate_hz': 1000.0})]))

    publish_loop('ERROR', 'control loop at 300 Hz of 1000 Hz')
    assert 'slave loop struggling' in wait_state(probe, 'DEGRADED').reason
    for _ in range(3):
        publish_loop('ERROR', 'control loop at 300 Hz of 1000 Hz')
        time.sleep(0.05)
    assert 'slave loop unhealthy' in wait_state(probe, 'HOLD').reason
    publish_loop('OK', 'control loop at 1000 Hz')
    wait_state(probe, 'NOMINAL')


def test_bad_parameter_is_one_line_and_exit_code_2():
    proc = subprocess.run(
        [sys.executable, '-m', 'telesurgery_ros.nodes.safety_watchdog', '--ros-args',
         '-p', 'commands.timeout:=-1.0'], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert 'Traceback' not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if 'configuration error' in line]
    assert lines == ["[SafetyWatchdog] configuration error: parameter 'commands.timeout' "
                     'must be 0.005 to 5.0 s, got -1.0']


def test_hold_follows_the_last_command_by_the_timeout_over_20_trials(watchdog, probe):
    """
    No polling: the HOLD comes from a deadline at the last command's arrival + the timeout.

    Reaction = HOLD received by the probe - last command sent by the probe (both on this
    process's clock); it includes two DDS hops. Never before the timeout; the bound on the
    late side is generous (a loaded 2-core machine); the figures are printed, and the target
    (timeout + 5 ms p99) is measured by ``telesurgery-bench hold-reaction``.
    """
    timeout = 0.1
    reactions = []
    for _ in range(20):
        wait_state(probe, 'NOMINAL')
        time.sleep(0.05)
        probe.clear(STATE)
        watchdog.sending = False
        time.sleep(0.01)
        last = watchdog.last_sent
        hold = wait_for(lambda: next((t for t, m in probe.timed(STATE)
                                      if m.data.startswith('HOLD')), None), 5.0,
                        what='HOLD after the commands stopped')
        reactions.append(hold - last)
        watchdog.sending = True
    r = np.array(reactions) * 1e3
    diag = watchdog_values(probe, 'state')
    print(f'\nHOLD after the last command, 20 trials: min {r.min():.1f} ms, p50 '
          f'{np.percentile(r, 50):.1f} ms, p99 {np.percentile(r, 99):.1f} ms, max '
          f'{r.max():.1f} ms (timeout {timeout * 1e3:.0f} ms); supervision thread '
          f"{diag.get('scheduling')}, {diag.get('evaluations')} evaluations so far")
    assert r.min() >= timeout * 1e3 - 1.0
    assert np.percentile(r, 99) < timeout * 1e3 + 100.0
