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
import importlib

# The names are loaded on first use (PEP 562), so that the pytest plugin, which pytest imports
# in every run wherever this package is installed, does not import rclpy and numpy up front.
_WHERE = {
    'SafetyState': 'telesurgery_ros.core.contract',
    'SafetyStatus': 'telesurgery_ros.core.contract',
    'alive': 'telesurgery_ros.testing.probe',
    'exits': 'telesurgery_ros.testing.probe',
    'pids': 'telesurgery_ros.testing.probe',
    'Probe': 'telesurgery_ros.testing.probe',
    'wait_for': 'telesurgery_ros.testing.probe',
    'launch_stack': 'telesurgery_ros.testing.stack',
    'NODES': 'telesurgery_ros.testing.stack',
    'Stack': 'telesurgery_ros.testing.stack',
    'StackError': 'telesurgery_ros.testing.stack',
}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
