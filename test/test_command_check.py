"""The command validator shared by the slave and the watchdog."""
import math

import numpy as np

from telesurgery_ros.core.command_check import CommandChecker, CommandLimits
from telesurgery_ros.core.contract import HOME_ORIENTATION, HOME_POSITION

HOME = np.array(HOME_POSITION)
Q = np.array(HOME_ORIENTATION)


def fresh():
    checker = CommandChecker(CommandLimits(max_speed=0.5, jump_margin=0.002))
    assert checker.check(10.0, HOME, Q, now=10.0).ok
    return checker


def test_smooth_motion_is_accepted():
    checker = fresh()
    for i in range(1, 500):  # 0.1 m/s for 1 s at 500 Hz
        t = 10.0 + i * 0.002
        assert checker.check(t, HOME + [0.1 * i * 0.002, 0, 0], Q, now=t).ok
    assert checker.accepted == 500


def test_each_kind_of_invalid_command_is_rejected_and_counted():
    checker = fresh()
    cases = [
        (10.002, HOME + [math.nan, 0, 0], Q, 'non_finite'),
        (10.002, HOME, Q * 1.1, 'quaternion'),
        (10.002, np.array([0.0, 0.0, 0.05]), Q, 'workspace'),
        (10.002, HOME + [0.05, 0, 0], Q, 'jump'),
        (9.0, HOME, Q, 'stale_stamp'),
        (10.0, HOME, Q, 'stale_stamp'),
        (11.0, HOME, Q, 'future_stamp'),
    ]
    for stamp, position, quaternion, reason in cases:
        verdict = checker.check(stamp, position, quaternion, now=10.002)
        assert not verdict.ok and verdict.reason == reason, (reason, verdict)
    assert checker.rejected == {'non_finite': 1, 'quaternion': 1, 'workspace': 1, 'jump': 1,
                                'stale_stamp': 2, 'future_stamp': 1}
    # Rejections do not move the reference: a valid next command is judged against HOME.
    assert checker.check(10.004, HOME + [0.0005, 0, 0], Q, now=10.004).ok


def test_future_check_is_off_without_a_shared_clock():
    checker = CommandChecker(CommandLimits(check_future=False))
    assert checker.check(1000.0, HOME, Q, now=0.0).ok


def test_reset_reanchors_to_the_arm():
    checker = fresh()
    far = HOME + [0.03, 0, 0]
    assert checker.check(10.002, far, Q, now=10.002).reason == 'jump'
    checker.reset(position=far, stamp=10.002)
    assert checker.check(10.004, far, Q, now=10.004).ok
