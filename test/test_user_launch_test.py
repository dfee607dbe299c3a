"""A user's launch test, written only against telesurgery_ros.testing (doc/testing.md shows it)."""
import pytest

from telesurgery_ros.testing import SafetyState

pytestmark = pytest.mark.ros


def test_blackout_holds_the_arm_then_it_recovers(telesurgery_stack):
    stack = telesurgery_stack(profile='lan')            # up, NOMINAL or DEGRADED
    with stack.blackout():                              # cut the link, restore it after
        print(f'HOLD after {stack.wait_for_state(SafetyState.HOLD, timeout=10):.2f} s')
        moved = stack.motion(1.0)                       # how far the arm got in 1 s (m)
        print(f'the arm moved {moved * 1e3:.3f} mm while the link was down')
        assert moved < 0.001
    print(f'NOMINAL after {stack.wait_for_state(SafetyState.NOMINAL, timeout=45):.1f} s')
    assert stack.shutdown() == 0                        # Ctrl-C: every node ended cleanly
