"""
The pytest plugin of ``telesurgery_ros.testing`` (entry point ``pytest11: telesurgery_ros``).

It only defines fixtures and imports nothing heavy until a test uses one, so it costs nothing
in test runs that do not start the stack.
"""
import pytest


@pytest.fixture
def telesurgery_stack():
    """
    Start launch files under test; each call starts one and returns its Stack.

    Call it with a launch file (default ``teleop_launch.yaml``), launch arguments as keywords,
    and the :class:`~telesurgery_ros.testing.Stack` options ``embedded``, ``ready_timeout``,
    ``watch_commands``, ``arm``, ``echo``. It returns once the arm is under control. Every
    stack started in the test is stopped at teardown, its domain freed, and the test fails
    if a process was left behind.
    """
    from telesurgery_ros.testing.stack import launch_stack
    stacks = []

    def start(launch_file='teleop_launch.yaml', **arguments):
        stack = launch_stack(launch_file, **arguments)
        stacks.append(stack)
        return stack

    yield start
    problems = []
    for stack in stacks:
        try:
            stack.close()
        except AssertionError as exc:
            problems.append(str(exc))
    assert not problems, '\n'.join(problems)
