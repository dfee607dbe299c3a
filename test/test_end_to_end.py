"""
End to end: the whole stack started from ``teleop_launch.yaml`` through ``telesurgery-launch``.

Each test reads like a launch test: start the launch, wait until the arm is under control
(safety state NOMINAL or DEGRADED, feedback flowing), assert while it runs, then stop it and
assert how every process ended. They are written with the public ``telesurgery_ros.testing``
(the ``telesurgery_stack`` fixture of its pytest plugin: a private ROS domain per stack, a probe
node in it, fault helpers, nothing left behind), so that module cannot rot. The embedded runner
is asked for explicitly: the exit lines asserted here are its own. Timing bounds are generous
(two loaded cores): the measured figures are printed, never asserted tightly.
"""
import json
import math
import sys
import time
import xml.etree.ElementTree as ElementTree

from harness import wait_for
from mcap.reader import make_reader
import numpy as np
import pybullet as pb
import pytest

from telesurgery_ros.procman import ManagedProcess
from telesurgery_ros.testing import NODES, SafetyState
from transforms3d import quaternions

READY_TIMEOUT = 60.0        # s: four nodes starting on two loaded cores
_never_ready = []           # once the stack failed to come up, later tests fail at once

pytestmark = pytest.mark.ros


@pytest.fixture
def start_stack(telesurgery_stack):
    """telesurgery_stack with the embedded runner; fail at once after a failed start-up."""
    def start(**options):
        if _never_ready:
            pytest.fail(f'the stack did not come up in an earlier test: {_never_ready[0]}')
        try:
            stack = telesurgery_stack(embedded=True, ready_timeout=READY_TIMEOUT, **options)
        except AssertionError as exc:
            _never_ready.append(f'{options}: {str(exc)[:2000]}')
            raise
        assert sorted(stack.pids) == sorted(NODES)
        print(f'stack {options} ready after {stack.ready_after:.1f} s')
        return stack
    return start


@pytest.mark.parametrize('profile, rtt_bounds', [
    ('lan', (0.0, 0.1)),
    ('rome_beijing_2024', (0.12, 0.6)),
])
def test_arm_follows_the_scripted_motion_then_shuts_down_cleanly(
        start_stack, profile, rtt_bounds):
    stack = start_stack(watch_commands=True, profile=profile, seed=1)
    since = time.monotonic()
    time.sleep(5.0)
    positions = stack.positions(since)
    errors = stack.tracking_errors(since)
    rtts = stack.round_trips(since)
    assert stack.state().state in (SafetyState.NOMINAL, SafetyState.DEGRADED)
    travel = float(np.ptp(positions[:, 0])) if len(positions) else 0.0
    rms = float(np.sqrt(np.mean(errors ** 2))) if errors.size else math.nan
    p50 = float(np.median(rtts)) if rtts.size else math.nan
    console = stack.rtt()
    print(f'{profile}: {len(positions)} feedback samples, x travel {travel * 1e3:.1f} mm, '
          f'tracking RMS {rms * 1e3:.2f} mm max {errors.max() * 1e3:.2f} mm, '
          f'RTT p50 {p50 * 1e3:.1f} ms over {rtts.size} round trips; the console says '
          f"p50 {console['p50'] * 1e3:.1f} ms over {console['count']}; network/stats "
          f'directions {sorted(stack.network_stats())}')
    assert travel > 0.01, 'the arm did not follow the 20 mm circle'
    assert rms < 0.005
    assert rtt_bounds[0] <= p50 <= rtt_bounds[1]
    assert rtt_bounds[0] <= console['p50'] <= rtt_bounds[1]
    assert sorted(stack.network_stats()) == ['backward', 'forward']

    assert stack.shutdown() == 0, stack.output()[-3000:]
    out = stack.output()
    for name in NODES:
        assert f'[{name}] exited: exit code 0' in out
    assert stack.exits() == dict.fromkeys(NODES, 'exit code 0')


def test_relay_blackout_holds_then_recovers_after_realignment(start_stack):
    stack = start_stack(profile='lan')
    with stack.blackout():
        took = stack.wait_for_state(SafetyState.HOLD, 10.0)
        print(f'HOLD {took * 1e3:.0f} ms after the blackout call: {stack.state().encode()}')
        time.sleep(0.3)
        held = stack.positions(time.monotonic() - 0.2)
        time.sleep(1.0)
        later = stack.positions(time.monotonic() - 0.2)
        assert len(held) and len(later), 'no feedback on the patient side during the blackout'
        drift = float(np.linalg.norm(later[-1] - held[0]))
        print(f'arm drift during 1 s of blackout: {drift * 1e3:.3f} mm')
        assert drift < 0.001
    took = stack.wait_for_state(SafetyState.NOMINAL, 45.0)
    print(f'NOMINAL again {took:.1f} s after the link came back')
    assert stack.shutdown() == 0


def test_killed_watchdog_leaves_the_slave_holding(start_stack):
    stack = start_stack(profile='lan')
    stack.kill('safety_watchdog')
    wait_for(lambda: '[safety_watchdog] exited: killed by SIGKILL (on its own)'
             in stack.output(), 10, what='the runner to report the killed watchdog')
    time.sleep(1.0)       # the slave holds after SAFETY_SILENCE_TIMEOUT without a state
    first = stack.positions(time.monotonic() - 0.5)
    time.sleep(1.0)
    last = stack.positions(time.monotonic() - 0.5)
    assert len(first) and len(last), 'the slave stopped publishing feedback'
    drift = float(np.linalg.norm(last[-1] - first[0]))
    print(f'arm drift over 1 s without a watchdog: {drift * 1e3:.3f} mm '
          '(the console keeps commanding a 20 mm circle)')
    assert drift < 0.001
    others = [n for n in NODES if n != 'safety_watchdog']
    assert all(stack.alive(n) for n in others)
    assert stack.shutdown() == 1          # one node did not end cleanly: the runner says so
    assert 'not clean: safety_watchdog' in stack.output()
    assert stack.exits()['safety_watchdog'] == 'killed by SIGKILL'


def test_killed_slave_makes_the_watchdog_estop(start_stack):
    stack = start_stack(profile='lan')
    stack.kill('slave_controller')
    took = stack.wait_for_state(SafetyState.ESTOP, 10.0)
    print(f'ESTOP {took * 1e3:.0f} ms after the slave was killed: {stack.state().encode()}')
    time.sleep(0.5)
    assert stack.state().state is SafetyState.ESTOP, 'ESTOP must stay latched'
    assert stack.shutdown() == 1
    out = stack.output()
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


@pytest.fixture(scope='module')
def demo_run(tmp_path_factory):
    """One short ``telesurgery-demo`` run (as ``make demo``): (exit code, output, run dir)."""
    if _never_ready:
        pytest.fail(f'the stack did not come up in an earlier test: {_never_ready[0]}')
    runs = tmp_path_factory.mktemp('runs')
    demo = ManagedProcess('demo', [
        sys.executable, '-m', 'telesurgery_ros.demo', '--duration', '4', '--profile', 'lan',
        '--runs-dir', str(runs), '--ready-timeout', str(READY_TIMEOUT)],
        sink=lambda name, line: sys.stdout.write(f'[{name}] {line}')).start()
    try:
        code = demo.wait(READY_TIMEOUT + 90)
    finally:
        demo.stop()
    assert code is not None, 'the demo did not finish'
    (run_dir,) = list(runs.iterdir())
    return code, demo.output(), run_dir


def test_demo_records_mcap_and_writes_the_report(demo_run):
    code, out, run_dir = demo_run
    assert '--- summary ---' in out and 'RTT ' in out and 'tracking error' in out
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
                  '/console/psm1/measured_cp', '/safety/state', '/network/stats',
                  '/diagnostics', '/tf', '/psm1/measured_js'):
        assert counts.get(topic, 0) > 0, topic
    assert counts['/robot_description'] == counts['/tf_static'] == 1
    assert counts == report['recorded_messages']
    assert report['robot_recording']['tf_messages'] == counts['/tf']
    assert report['robot_recording']['joint_states_skipped'] == 0
    for name in NODES:
        assert f'[{name}] exited: ' in out


def _matrix(transform):
    """geometry_msgs/Transform (as rosbags decodes it) -> 4x4."""
    t, q = transform.translation, transform.rotation
    matrix = np.eye(4)
    matrix[:3, :3] = quaternions.quat2mat((q.w, q.x, q.y, q.z))
    matrix[:3, 3] = (t.x, t.y, t.z)
    return matrix


def test_demo_recording_replays_as_a_robot(demo_run, tmp_path):
    """An independent reader (rosbags) decodes the recording; the TF tree is the arm's."""
    from rosbags.highlevel import AnyReader
    _code, _out, run_dir = demo_run
    counts, failures, first_time = {}, [], {}
    tf, measured, static, description, qos = {}, {}, [], [], {}
    with AnyReader([run_dir / 'run.mcap']) as reader:
        for connection in reader.connections:
            qos[connection.topic] = [q.durability.name for q in
                                     connection.ext.offered_qos_profiles]
        for connection, log_time, raw in reader.messages():
            topic = connection.topic
            try:
                msg = reader.deserialize(raw, connection.msgtype)
            except Exception as exc:  # noqa: B902 (every failure is collected and reported)
                failures.append(f'{topic}: {exc}')
                continue
            counts[topic] = counts.get(topic, 0) + 1
            first_time.setdefault(topic, log_time)
            stamp = getattr(getattr(msg, 'header', None), 'stamp', None)
            if topic == '/tf':
                stamp = msg.transforms[0].header.stamp
                tf[stamp.sec * 10**9 + stamp.nanosec] = msg.transforms
            elif topic == '/psm1/measured_cp':
                measured[stamp.sec * 10**9 + stamp.nanosec] = msg
            elif topic == '/tf_static':
                static.extend(msg.transforms)
            elif topic == '/robot_description':
                description.append(msg.data)
    print(f'rosbags decoded {sum(counts.values())} messages on {len(counts)} topics, '
          f'{len(failures)} failures')
    assert not failures, failures[:5]
    report = json.load(open(run_dir / 'report.json'))
    assert counts == report['recorded_messages']
    # Latched topics: once, first in the file, offered TRANSIENT_LOCAL for ros2 bag play.
    assert len(description) == 1 and counts['/tf_static'] == 1
    for topic in ('/robot_description', '/tf_static'):
        assert first_time[topic] <= min(first_time.values())
        assert qos[topic] == ['TRANSIENT_LOCAL']

    # /robot_description is a URDF an independent parser (PyBullet's) loads, and its joints
    # are those measured_js reports, plus mimic joints only (robot_state_publisher's need).
    urdf = tmp_path / 'robot_description.urdf'
    urdf.write_text(description[0])
    client = pb.connect(pb.DIRECT)
    try:
        body = pb.loadURDF(str(urdf), physicsClientId=client)
        moving = {pb.getJointInfo(body, j, physicsClientId=client)[1].decode()
                  for j in range(pb.getNumJoints(body, physicsClientId=client))
                  if pb.getJointInfo(body, j, physicsClientId=client)[2] != pb.JOINT_FIXED}
    finally:
        pb.disconnect(physicsClientId=client)
    joint_names = set(next(iter(_joint_states(run_dir))).name)
    mimics = {j.get('name') for j in ElementTree.fromstring(description[0]).iter('joint')
              if j.find('mimic') is not None}
    assert joint_names <= moving and moving - joint_names == mimics, (joint_names, moving)

    # The TF tree is connected from world to psm1_tool_tip.
    parents = {t.child_frame_id: t for t in static}
    some_tf = next(iter(tf.values()))
    parents.update({t.child_frame_id: t for t in some_tf})
    chain, frame = ['psm1_tool_tip'], 'psm1_tool_tip'
    while frame in parents and len(chain) < 50:
        frame = parents[frame].header.frame_id
        chain.append(frame)
    print('TF chain: ' + ' <- '.join(chain))
    assert chain[-1] == 'world' and 'psm1_rcm' in chain and 'psm1_base' in chain

    # At every instant both were recorded, the tip from TF agrees with measured_cp.
    common = sorted(set(tf) & set(measured))
    assert common, 'no /tf stamp matches a measured_cp stamp'
    worst_position = worst_angle = 0.0
    for stamp in common:
        tree = dict(parents, **{t.child_frame_id: t for t in tf[stamp]})
        pose, frame = np.eye(4), 'psm1_tool_tip'
        while frame != 'psm1_rcm':
            pose = _matrix(tree[frame].transform) @ pose
            frame = tree[frame].header.frame_id
        cp = measured[stamp].pose
        position = np.array([cp.position.x, cp.position.y, cp.position.z])
        rotation = quaternions.quat2mat((cp.orientation.w, cp.orientation.x, cp.orientation.y,
                                         cp.orientation.z))
        worst_position = max(worst_position, float(np.linalg.norm(pose[:3, 3] - position)))
        cosine = (np.trace(pose[:3, :3].T @ rotation) - 1.0) / 2.0
        worst_angle = max(worst_angle, math.acos(min(1.0, max(-1.0, cosine))))
    print(f'TF tip vs measured_cp at {len(common)} instants: worst {worst_position * 1e9:.3f} '
          f'nm, {worst_angle:.2e} rad')
    assert worst_position < 1e-6
    assert worst_angle < 1e-6


def _joint_states(run_dir):
    from rosbags.highlevel import AnyReader
    with AnyReader([run_dir / 'run.mcap']) as reader:
        connections = [c for c in reader.connections if c.topic == '/psm1/measured_js']
        for connection, _t, raw in reader.messages(connections=connections):
            yield reader.deserialize(raw, connection.msgtype)
