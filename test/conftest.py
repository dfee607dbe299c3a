"""
Test session set-up: every run gets its own DDS domain, on localhost only.

The domain is chosen before anything imports rclpy, by locking a file per domain id, so
concurrent test runs on one machine never see each other's traffic.
"""
import os

import pytest

from telesurgery_ros.domain import isolate

isolate(os.environ)


def pytest_report_header(config):
    return f"ROS_DOMAIN_ID={os.environ['ROS_DOMAIN_ID']} (localhost discovery)"


@pytest.fixture(scope='session')
def ros_context():
    """
    Initialise rclpy once for the test process (in the run's private domain).

    Without rclpy's signal handlers: with them, a SIGTERM (a CI timeout, ``kill``) only shut
    the context down and the test run carried on. Now it ends the run, and the node processes
    die with it (PR_SET_PDEATHSIG); Ctrl-C stays pytest's KeyboardInterrupt.
    """
    import rclpy
    from rclpy.signals import SignalHandlerOptions
    rclpy.init(signal_handler_options=SignalHandlerOptions.NO)
    yield
    rclpy.try_shutdown()


@pytest.fixture
def probe(ros_context):
    """Yield a test-side rclpy node spinning in a background thread (see harness.Probe)."""
    from harness import Probe
    node = Probe()
    yield node
    node.close()


@pytest.fixture
def launcher():
    """Start node processes with harness.start_node; all are stopped at teardown."""
    from harness import Launcher
    group = Launcher()
    yield group
    leftovers = group.stop_all()
    assert not leftovers, f'processes still alive after teardown: {leftovers}'
