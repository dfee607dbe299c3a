"""
The public telesurgery_ros.testing module itself.

Its parsing of launch output, its domains, and its probes and fault helpers on a live stack
(relay profile change, refused parameters, a killed node).

The end-to-end tests (test_end_to_end.py) and the user example (test_user_launch_test.py)
exercise the rest (blackout, states, poses, RTT, shutdown) through the same public module.
"""
import os
import signal
import time

import pytest

from telesurgery_ros import domain
from telesurgery_ros.testing import exits, NODES, pids, SafetyState, StackError, wait_for

# Output of the embedded runner, as test_end_to_end.py sees it (its exact lines).
EMBEDDED = """\
[launch] embedded runner (ROS 2 launch not installed): /x/launch/teleop_launch.yaml
[launch] master_console started (pid 101): /venv/bin/python -m ...
[launch] network_relay started (pid 102): /venv/bin/python -m ...
[master_console] [INFO] [1764000000.1] [master_console]: input trajectory
[network_relay] exited: exit code 0
[master_console] exited: killed by SIGKILL (on its own)
[launch] not clean: master_console
"""
# Output of ROS 2 launch 3.7.1 running teleop_launch.yaml, one node killed (lines from that
# run; only the long cmd is cut short).
ROS_LAUNCH = """\
[INFO] [launch]: All log files can be found below /root/.ros/log/2026-12-02-07-29-36-322045-vm
[INFO] [master_console-1]: process started with pid [31538]
[INFO] [safety_watchdog-4]: process started with pid [31549]
[ERROR] [safety_watchdog-4]: process has died [pid 31549, exit code -9, cmd '/tmp/rosnative/ws\
/install/telesurgery_ros/lib/telesurgery_ros/safety_watchdog --ros-args'].
[INFO] [master_console-1]: process has finished cleanly [pid 31538]
"""


class _Output:

    def __init__(self, text):
        self.text = text

    def output(self):
        return self.text


def test_node_processes_are_read_from_either_launchers_output():
    assert pids(_Output(EMBEDDED)) == {'master_console': 101, 'network_relay': 102}
    assert exits(EMBEDDED) == {'network_relay': 'exit code 0',
                               'master_console': 'killed by SIGKILL'}
    assert pids(_Output(ROS_LAUNCH)) == {'master_console': 31538, 'safety_watchdog': 31549}
    assert exits(ROS_LAUNCH) == {'master_console': 'exit code 0',
                                 'safety_watchdog': 'exit code -9'}


def test_a_probe_keeps_every_sample_of_a_burst(probe):
    """
    A probe records a stream deep enough to keep a burst its executor cannot take at once.

    With the stream QoS's history of 10 it overwrote samples whenever its thread waited for a
    core, and a test that counts what arrived saw losses that the stack never had.
    """
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from harness import publish_burst
    topic, burst = 'probe_burst_test', 400
    probe.record(PoseStamped, topic)
    node = rclpy.create_node('probe_burst_source')
    took = float('nan')
    try:
        took = publish_burst(node, topic, burst, what='the probe to match')
        wait_for(lambda: probe.count(topic) >= burst, 10, interval=0.05,
                 what=f'{burst} samples at the probe')
    except AssertionError:
        pass                   # the count below says how many arrived
    finally:
        node.destroy_node()
    stamps = [m.header.stamp.nanosec for m in probe.messages(topic)]
    print(f'{burst} samples published in {took * 1e3:.1f} ms; the probe kept {len(stamps)}')
    assert stamps == list(range(burst))


def test_a_released_domain_can_be_claimed_again(tmp_path):
    class Fixed:

        @staticmethod
        def shuffle(items):
            items.sort()

    first = domain.claim_domain(5, 6, lock_dir=str(tmp_path), rng=Fixed)
    second = domain.claim_domain(5, 6, lock_dir=str(tmp_path), rng=Fixed)
    assert (first, second) == (5, 6)
    with pytest.raises(RuntimeError, match='no free ROS_DOMAIN_ID in 5..6'):
        domain.claim_domain(5, 6, lock_dir=str(tmp_path), rng=Fixed)
    domain.release_domain(5, lock_dir=str(tmp_path))
    assert domain.claim_domain(5, 6, lock_dir=str(tmp_path), rng=Fixed) == 5
    for held in (5, 6):
        domain.release_domain(held, lock_dir=str(tmp_path))
    env = domain.isolated_environment(42, {'ROS_STATIC_PEERS': 'x', 'HOME': '/h'})
    assert env['ROS_DOMAIN_ID'] == '42' and env['ROS_AUTOMATIC_DISCOVERY_RANGE'] == 'LOCALHOST'
    assert 'ROS_STATIC_PEERS' not in env and env['HOME'] == '/h'


@pytest.mark.ros
def test_probes_profile_change_and_a_killed_node(telesurgery_stack):
    stack = telesurgery_stack(profile='lan', embedded=True)
    assert sorted(stack.pids) == sorted(NODES)
    assert str(stack.domain) != os.environ['ROS_DOMAIN_ID'], 'the stack has its own domain'
    position, quaternion = stack.pose()
    assert -0.25 < position[2] < 0 and abs(sum(q * q for q in quaternion) - 1) < 1e-6
    stats = stack.wait_for_stats(lambda s: s.get('forward', {}).get('profile') == 'lan', 10)
    lan_delay = float(stats['forward']['configured_delay_ms'])

    stack.set_profile('rome_beijing_2024')
    stats = stack.wait_for_stats(
        lambda s: s.get('forward', {}).get('profile') == 'rome_beijing_2024', 10)
    far_delay = float(stats['forward']['configured_delay_ms'])
    print(f'configured forward delay: lan {lan_delay:.1f} ms, rome_beijing_2024 '
          f'{far_delay:.1f} ms')
    assert far_delay > lan_delay + 20
    with pytest.raises(StackError, match='network_relay refused profile: .*no_such_profile'):
        stack.set_profile('no_such_profile')
    rtt = stack.wait_for_rtt(lambda r: r['last'] > 0.1, 20)
    print(f"console RTT after the change: last {rtt['last'] * 1e3:.1f} ms, "
          f"p50 {rtt['p50'] * 1e3:.1f} ms over {rtt['count']}")

    stack.kill('slave_controller', signal.SIGKILL)
    assert not stack.alive('slave_controller')
    took = stack.wait_for_state(SafetyState.ESTOP, 10)
    print(f'ESTOP {took:.2f} s after the kill helper returned')
    with pytest.raises(StackError, match="no node process 'nobody'"):
        stack.kill('nobody')
    started = time.monotonic()
    assert stack.shutdown() == 1
    assert stack.exits()['slave_controller'] == 'killed by SIGKILL'
    print(f'shutdown took {time.monotonic() - started:.1f} s')
