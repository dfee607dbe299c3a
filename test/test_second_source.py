"""
One command source per arm (issue 12 item 5), with real processes.

Console (holding at home), relay (``lan``), slave and watchdog run; the test process is a
second publisher of ``psm1/servo_cp`` next to the relay, node ``test_probe``, sending fresh,
valid poses 5 mm away from the arm. Its commands never move the arm (0.0 mm), are counted as
``second_source`` by the slave and the watchdog, and the watchdog holds, naming the node.
Then the relay goes away (a clean shutdown: its publisher leaves the graph); the test
process, now the only publisher, is followed only through HOLD and re-alignment: its
commands 5 mm off keep the arm still, its commands on the arm's pose release the HOLD, and
then the arm follows it.
"""
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped
from harness import wait_for
import numpy as np
from std_msgs.msg import String

from telesurgery_ros import rosutil
from telesurgery_ros.core import contract

TOPICS = contract.arm_topics()
STATE = contract.SAFETY_STATE_TOPIC
QUAT = list(contract.HOME_ORIENTATION)
OFFSET = np.array([0.005, 0.0, 0.0])


class Intruder:
    """Publishes ``target`` on psm1/servo_cp at 500 Hz from the test process while on."""

    def __init__(self, probe):
        self.probe = probe
        self.pub = probe.create_publisher(PoseStamped, TOPICS['servo_cp'], rosutil.STREAM_QOS)
        self.target = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        next_t = time.monotonic()
        while not self._stop.is_set():
            target = self.target
            if target is not None:
                stamp = self.probe.get_clock().now().to_msg()
                self.pub.publish(rosutil.make_pose_stamped(target, QUAT, 'psm1_rcm', stamp))
            next_t += 0.002
            time.sleep(max(0.0, next_t - time.monotonic()))

    def close(self):
        self._stop.set()
        self._thread.join(2.0)


def state(probe):
    msg = probe.latest(STATE)
    return '' if msg is None else msg.data


def values(probe, name):
    for msg in reversed(probe.messages('/diagnostics')):
        for status in msg.status:
            if status.name == name:
                return {kv.key: kv.value for kv in status.values}
    return {}


def tip(probe):
    return rosutil.pose_to_arrays(probe.latest(TOPICS['measured_cp']).pose)[0]


def second_source_counts(probe):
    """Wait until the slave and the watchdog both count a refused second source; their values."""
    slave = wait_for(lambda: (v := values(probe, 'slave_controller: control loop'))
                     and int(v['second_source']) > 0 and v, 10.0, what='slave counts')
    watchdog = wait_for(lambda: (v := values(probe, 'safety_watchdog: state'))
                        and int(v['second_source']) > 0 and v, 10.0, what='watchdog counts')
    return slave, watchdog


def motion_since(probe, t0, origin):
    tips = [rosutil.pose_to_arrays(m.pose)[0] for t, m in probe.timed(TOPICS['measured_cp'])
            if t >= t0]
    return max(float(np.linalg.norm(p - origin)) for p in tips)


def test_a_second_publisher_never_moves_the_arm_and_takes_over_only_through_hold(
        launcher, probe):
    probe.record(PoseStamped, TOPICS['measured_cp'], rosutil.STREAM_QOS)
    probe.record(String, STATE, rosutil.SAFETY_QOS)
    probe.record(DiagnosticArray, '/diagnostics', rosutil.DIAGNOSTICS_QOS)
    launcher.start('slave_controller')
    relay = launcher.start('network_relay', params={'profile': 'lan'})
    launcher.start('master_console', params={'trajectory.amplitude': 0.0})
    wait_for(lambda: probe.latest(TOPICS['measured_cp']) is not None, 60.0, what='the slave')
    launcher.start('safety_watchdog', params={'faults.count': 1000})
    wait_for(lambda: state(probe).startswith('NOMINAL'), 60.0, what='NOMINAL')
    intruder = Intruder(probe)
    try:
        # 1. Next to the relay: refused, counted, named; the arm does not move.
        time.sleep(0.5)
        origin = tip(probe)
        t0 = time.monotonic()
        intruder.target = origin + OFFSET
        reason = 'second command source on psm1/servo_cp: node test_probe'
        wait_for(lambda: state(probe) == f'HOLD: {reason}', 10.0,
                 what=f'HOLD naming the second source (last: {state(probe)})')
        time.sleep(1.5)
        intruder.target = None
        moved = motion_since(probe, t0, origin)
        slave, watchdog = second_source_counts(probe)
        print(f'\nsecond publisher next to the relay: the arm moved {moved * 1e3:.1f} mm '
              f'({moved * 1e6:.2f} um); second_source: slave {slave["second_source"]}, '
              f'watchdog {watchdog["second_source"]}; watchdog: {reason}')
        assert moved < 1e-4
        assert slave['command_source'] == watchdog['command_source'] == 'network_relay'
        wait_for(lambda: state(probe).startswith('NOMINAL'), 20.0,
                 what=f'NOMINAL once the second source stopped (last: {state(probe)})')

        # 2. The relay goes: the test process is the only publisher, 5 mm off: HOLD, still.
        relay.stop()
        wait_for(lambda: state(probe).startswith('HOLD'), 10.0, what='HOLD without the relay')
        origin = tip(probe)
        t1 = time.monotonic()
        intruder.target = origin + OFFSET
        wait_for(lambda: values(probe, 'slave_controller: control loop').get(
            'command_source') == 'test_probe', 15.0, what='the slave following test_probe')
        time.sleep(1.0)
        held = state(probe)
        moved = motion_since(probe, t1, origin)
        print(f'relay gone, new source 5 mm off: the arm moved {moved * 1e6:.2f} um; '
              f'watchdog: {held}')
        assert moved < 1e-4
        assert held.startswith('HOLD') and 'alignment' in held, held

        # 3. Re-aligned on the arm: released; then the arm follows the new source.
        intruder.target = tip(probe)
        wait_for(lambda: state(probe).startswith('NOMINAL'), 15.0,
                 what=f'NOMINAL after re-alignment (last: {state(probe)})')
        start = tip(probe)
        for k in range(1, 101):                   # 5 mm in 0.5 s, then stay there
            intruder.target = start + OFFSET * k / 100
            time.sleep(0.005)
        goal = start + OFFSET
        wait_for(lambda: np.linalg.norm(tip(probe) - goal) < 5e-4, 10.0,
                 what='the arm following the new source')
        changes = values(probe, 'safety_watchdog: state')
        print('new source followed after HOLD and re-alignment: watchdog source '
              f"{changes['command_source']}, changes {changes['command_source_changes']}")
        assert changes['command_source'] == 'test_probe'
        assert int(changes['command_source_changes']) >= 1
    finally:
        intruder.close()
