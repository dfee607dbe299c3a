"""
``telesurgery_ros.testing``: launch tests of this stack, for its users and for the project.

Bring the stack up under a profile, inject a fault, assert what the arm did::

    def test_blackout_holds_the_arm(telesurgery_stack):
        stack = telesurgery_stack(profile='lan')          # up and NOMINAL/DEGRADED
        with stack.blackout():                            # network/blackout: cut, then restore
            stack.wait_for_state('HOLD', timeout=10)
            assert stack.motion(1.0) < 0.001              # the arm held still (m)
        stack.wait_for_state('NOMINAL', timeout=45)       # re-aligned, following again
        assert stack.shutdown() == 0                      # Ctrl-C: every node ended cleanly

The ``telesurgery_stack`` fixture comes from this package's pytest plugin (the ``pytest11``
entry point ``telesurgery_ros``, active wherever the package is installed); outside pytest use
``with launch_stack(profile='lan') as stack:``. Every stack runs on a private ROS domain of
its own, with the test's probe node in an rclpy context bound to that domain, and leaves no
process behind. See :mod:`telesurgery_ros.testing.stack` for every probe and fault helper.
"""
from telesurgery_ros.core.contract import SafetyState, SafetyStatus
from telesurgery_ros.testing.probe import alive, exits, pids, Probe, wait_for
from telesurgery_ros.testing.stack import launch_stack, NODES, Stack, StackError

__all__ = ['alive', 'exits', 'launch_stack', 'NODES', 'pids', 'Probe', 'SafetyState',
           'SafetyStatus', 'Stack', 'StackError', 'wait_for']
