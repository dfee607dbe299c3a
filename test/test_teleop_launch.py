"""
A launch_testing launch test, for ROS-native ``colcon test``: teleop_launch.yaml on ``lan``.

The form of ros2/launch's ``launch_testing`` examples: ``generate_test_description()`` returns
the launch (the package's ``teleop_launch.yaml`` with ``profile:=lan``) and a ``ReadyToTest``;
the active test waits for the safety state NOMINAL while the stack runs; the post-shutdown test
checks that every node exited cleanly when launch stopped them. It runs wherever
``launch_testing`` and ``launch_ros`` are installed (a ROS 2 install, after
``source install/setup.bash``); in the pip-only set-up, which has neither, pytest reports the
module as skipped with the reason. doc/testing.md says how to run it both ways.
"""
import os
import time
import unittest

import pytest

try:
    import launch
    if not hasattr(launch, 'LaunchService'):    # our launch/ folder, seen as a namespace
        raise ImportError('launch is not installed', name='launch')
    from launch.actions import IncludeLaunchDescription
    from launch.launch_description_sources import AnyLaunchDescriptionSource
    import launch_ros  # noqa: F401 (the <node> tags of our YAML launch files need it)
    import launch_testing
    import launch_testing.actions
    import launch_testing.asserts
except ImportError as exc:
    pytest.skip(f'launch_testing is not installed ({exc.name} missing): this launch_testing '
                'test runs under ROS 2 (colcon test)', allow_module_level=True)

import rclpy
from rclpy.executors import SingleThreadedExecutor
from std_msgs.msg import String

from telesurgery_ros import resources
from telesurgery_ros.core import contract
from telesurgery_ros.rosutil import SAFETY_QOS

LAUNCH_FILE = os.path.join(resources.share_directory(), 'launch', 'teleop_launch.yaml')
NODES = ('master_console', 'network_relay', 'slave_controller', 'safety_watchdog')
NOMINAL_TIMEOUT = 90.0      # s: four nodes starting on two loaded cores


@pytest.mark.launch_test
def generate_test_description():
    return launch.LaunchDescription([
        IncludeLaunchDescription(AnyLaunchDescriptionSource(LAUNCH_FILE),
                                 launch_arguments={'profile': 'lan'}.items()),
        launch_testing.actions.ReadyToTest(),
    ])


class TestTheStackReachesNominal(unittest.TestCase):
    """Active test: runs while the launch is up."""

    def test_safety_state_becomes_nominal(self, proc_output):
        context = rclpy.Context()
        rclpy.init(context=context)
        node = rclpy.create_node('teleop_launch_test_probe', context=context)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        states = []
        node.create_subscription(String, contract.SAFETY_STATE_TOPIC,
                                 lambda msg: states.append(msg.data), SAFETY_QOS)
        started = time.monotonic()
        try:
            while time.monotonic() - started < NOMINAL_TIMEOUT and (
                    not states or contract.SafetyStatus.decode(states[-1]).state is not
                    contract.SafetyState.NOMINAL):
                executor.spin_once(timeout_sec=0.1)
        finally:
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown(context=context)
        print(f'safety/state after {time.monotonic() - started:.1f} s: '
              f'{states[-1] if states else None} ({len(states)} messages)')
        self.assertTrue(states, f'no {contract.SAFETY_STATE_TOPIC} in {NOMINAL_TIMEOUT} s')
        self.assertIs(contract.SafetyStatus.decode(states[-1]).state,
                      contract.SafetyState.NOMINAL)
        # What the nodes printed is there too (launch captures every process's output).
        proc_output.assertWaitFor('PyBullet DIRECT at 1000 Hz', timeout=10)


@launch_testing.post_shutdown_test()
class TestEveryNodeExitsCleanly(unittest.TestCase):
    """Post-shutdown test: runs after launch stopped every process."""

    def test_exit_codes(self, proc_info):
        names = sorted(info.process_name.rsplit('-', 1)[0] for info in proc_info)
        self.assertEqual(names, sorted(NODES))
        launch_testing.asserts.assertExitCodes(proc_info)
