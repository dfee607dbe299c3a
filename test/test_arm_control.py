"""Motion limits and hold logic of the slave arm, without ROS (clocks are plain numbers)."""
import math

import numpy as np

from telesurgery_ros.core import contract
from telesurgery_ros.core.arm_control import (
    ArmController, ControlConfig, JointFollower, MotionLimits)
from telesurgery_ros.core.contract import SafetyState, SafetyStatus
from telesurgery_ros.core.kinematics import PsmKinematics

KIN = PsmKinematics()
HOME = np.append(KIN.home_joints(contract.HOME_POSITION, contract.HOME_ORIENTATION), 0.0)
DT = 0.001


def test_far_goal_is_approached_within_velocity_and_acceleration_limits():
    limits = MotionLimits.psm()
    follower = JointFollower(limits, HOME)
    goal = HOME + np.array([0.6, -0.5, 0.1, 2.0, 1.0, -1.0, 0.8])
    follower.set_goal(goal)
    positions, velocities = [], []
    for _ in range(3000):
        p, v = follower.step(DT)
        positions.append(p.copy())
        velocities.append(v.copy())
    velocities = np.array(velocities)
    accelerations = np.diff(velocities, axis=0) / DT
    assert np.all(np.abs(velocities) <= limits.velocity + 1e-12)
    assert np.all(np.abs(accelerations) <= limits.acceleration * (1 + 1e-9))
    assert np.allclose(positions[-1], goal, atol=1e-9)
    # No overshoot beyond the last braking step (amax * dt * dt = 40 urad, 4 um at 0.1 m).
    travel = (np.array(positions) - HOME) * np.sign(goal - HOME)
    assert np.all(travel <= np.abs(goal - HOME) + limits.acceleration * DT * DT + 1e-12)


def test_streamed_goal_is_tracked_with_feed_forward():
    follower = JointFollower(MotionLimits.psm(), HOME)
    errors = []
    amplitude = np.array([0.3, 0.3, 0.05, 0.3, 0.3, 0.3, 0.3])
    for i in range(2000):
        t = i * DT
        goal = HOME + amplitude * math.sin(math.pi * t)
        rate = amplitude * math.pi * math.cos(math.pi * t)
        if i % 4 == 0:                 # commands at 250 Hz, physics at 1 kHz
            follower.set_goal(goal, rate)
        p, _ = follower.step(DT)
        if i > 500:
            errors.append(np.max(np.abs(p - goal)))
    # A goal stream at 250 Hz lags by about half a command period (2 ms * 0.94 rad/s).
    assert max(errors) < 0.004


def make(require_safety=True, **kw):
    return ArmController(HOME, config=ControlConfig(require_safety=require_safety, **kw))


def pose(offset=(0.0, 0.0, 0.0)):
    return np.array(contract.HOME_POSITION) + offset, np.array(contract.HOME_ORIENTATION)


def run(ctl, t0, seconds, measured=None):
    """Tick the controller; ``measured`` None means a perfect arm (measured = setpoint)."""
    t = t0
    p = ctl.follower.position
    for _ in range(int(round(seconds / DT))):
        t += DT
        p, _ = ctl.update(t, DT, p.copy() if measured is None else measured)
    return t, p.copy()


def tip(joints):
    return KIN.fk(joints[:6])[0]


def test_holds_until_a_safety_state_arrives_then_follows():
    ctl = make()
    out = ctl.command_pose(1.0, *pose((0.02, 0.0, 0.0)), now=1.0)
    assert out.accepted and not out.executed
    t, p = run(ctl, 1.0, 0.2)
    assert ctl.holding and ctl.hold_reason == 'no_safety_state'
    assert np.allclose(p, HOME)
    ctl.on_safety(SafetyStatus(SafetyState.NOMINAL), t)
    run(ctl, t, 0.001)
    assert not ctl.holding
    ctl.command_pose(t + 0.01, *pose((0.02, 0.0, 0.0)), now=t)
    for _ in range(100):
        ctl.on_safety(SafetyStatus(SafetyState.NOMINAL), t)
        t, p = run(ctl, t, 0.01)
    assert np.linalg.norm(tip(p) - pose((0.02, 0.0, 0.0))[0]) < 1e-6


def test_without_require_safety_it_moves_at_once():
    ctl = make(require_safety=False)
    assert ctl.command_pose(1.0, *pose((0.0, 0.01, 0.0)), now=1.0).executed
    _, p = run(ctl, 1.0, 0.5)
    assert np.linalg.norm(tip(p) - pose((0.0, 0.01, 0.0))[0]) < 1e-6


def test_silent_safety_state_freezes_at_the_measured_joints():
    ctl = make(safety_timeout=0.1)
    ctl.on_safety(SafetyStatus(SafetyState.NOMINAL), 0.0)
    ctl.command_pose(0.0, *pose((0.04, 0.0, 0.0)), now=0.0)
    t, p = run(ctl, 0.0, 0.05)
    assert not ctl.holding
    measured = np.array(p) + 1e-4     # the real arm lags its setpoint a little
    t, p = run(ctl, t, 0.1, measured=measured)
    assert ctl.holding and ctl.hold_reason == 'safety_silent'
    assert np.allclose(p, measured)
    held = p.copy()
    out = ctl.command_pose(t, *pose((0.045, 0.0, 0.0)), now=t)
    assert out.accepted and not out.executed
    t, p = run(ctl, t, 0.3, measured=measured)
    assert np.array_equal(p, held)


def test_hold_and_estop_freeze_and_release_re_anchors_the_checker():
    ctl = make(safety_timeout=5.0)
    t = 0.0
    ctl.on_safety(SafetyStatus(SafetyState.NOMINAL), t)
    ctl.command_pose(t, *pose(), now=t)
    stamp = 0.0
    for state in (SafetyState.HOLD, SafetyState.ESTOP):
        ctl.on_safety(SafetyStatus(state, 'test'), t)
        t, p = run(ctl, t, 0.01)
        assert ctl.holding and ctl.hold_reason == 'safety_' + state.name.lower()
        # The operator keeps moving while held: accepted, not executed.
        stamp += 0.1
        out = ctl.command_pose(stamp, *pose((0.03, 0.0, 0.0)), now=stamp)
        assert out.accepted and not out.executed
        t, p2 = run(ctl, t, 0.05)
        assert np.array_equal(p, p2)
    ctl.on_safety(SafetyStatus(SafetyState.NOMINAL), t)
    t, p3 = run(ctl, t, 0.01)
    assert not ctl.holding and np.allclose(p3, p)      # stays until a new command arrives
    # The checker is anchored to the operator's command (3 cm away), not the old one:
    assert np.allclose(ctl.checker.last_position, pose((0.03, 0.0, 0.0))[0])
    out = ctl.command_pose(stamp + 0.01, *pose((0.031, 0.0, 0.0)), now=stamp + 0.01)
    assert out.executed


def test_degraded_slows_the_arm():
    limits = MotionLimits.psm()

    def peak_speed(state):
        ctl = make(degraded_speed_scale=0.5)
        ctl.on_safety(SafetyStatus(state), 0.0)
        ctl.command_pose(0.0, *pose((0.05, 0.0, 0.0)), now=0.0)
        t, peak = 0.0, np.zeros(7)
        for _ in range(600):
            ctl.on_safety(SafetyStatus(state), t)
            t, _ = run(ctl, t, DT)
            peak = np.maximum(peak, np.abs(ctl.follower.velocity))
        assert np.linalg.norm(tip(ctl.follower.position) - pose((0.05, 0.0, 0.0))[0]) < 1e-4
        return peak
    nominal, degraded = peak_speed(SafetyState.NOMINAL), peak_speed(SafetyState.DEGRADED)
    assert np.all(degraded <= 0.5 * limits.velocity + 1e-12)
    assert np.any(nominal > 0.9 * limits.velocity)


def test_invalid_commands_never_move_the_arm():
    ctl = make(require_safety=False)
    ctl.command_pose(1.0, *pose(), now=1.0)
    t, before = run(ctl, 1.0, 0.05)
    bad = [
        (t, [math.nan, 0.0, -0.1], contract.HOME_ORIENTATION, 'non_finite'),
        (t + 0.01, [0.0, 0.0, 0.1], contract.HOME_ORIENTATION, 'workspace'),
        (t + 0.02, [0.0, 0.0, -0.1], [2.0, 0.0, 0.0, 0.0], 'quaternion'),
        (t + 0.03, [0.1, 0.0, -0.12], contract.HOME_ORIENTATION, 'jump'),
        (0.5, [0.0, 0.0, -0.12], contract.HOME_ORIENTATION, 'stale_stamp'),
    ]
    for stamp, position, quat, reason in bad:
        out = ctl.command_pose(stamp, position, quat, now=t)
        assert not out.accepted and out.reason == reason
    assert not ctl.command_jaw(math.inf, t)
    _, after = run(ctl, t, 0.1)
    assert np.array_equal(before, after)
    assert ctl.jaw_rejected == 1 and sum(ctl.checker.rejected.values()) == len(bad)


def test_unreachable_command_goes_to_the_nearest_reachable_pose():
    ctl = make(require_safety=False)
    # Within the workspace sphere, but further sideways than the pitch limit allows.
    goal = np.array([0.2, 0.0, -0.05])
    out = ctl.command_pose(1.0, goal, contract.HOME_ORIENTATION, now=1.0)
    assert out.executed and 'pitch_limit' in out.ik_reason
    assert ctl.ik_clamped == 1
    assert np.all(np.isfinite(ctl.follower.goal))


def test_goal_is_extrapolated_between_commands_then_rests_on_the_last_one():
    ctl = make(require_safety=False)
    velocity = 0.1                                   # m/s along y
    last = None
    for i in range(50):                              # a 250 Hz stream, 0.2 s
        t = i * 0.004
        last = pose((0.0, velocity * t, 0.0))
        ctl.command_pose(t, *last, now=t)
        run(ctl, t, 0.004)
    # Just after the last command the goal keeps moving with the stream ...
    t = 49 * 0.004 + 0.006
    ctl.update(t, DT, ctl.follower.position)
    ahead = tip(np.array(ctl.follower.goal))[1] - last[0][1]
    assert 0.0 < ahead <= velocity * 0.010 + 1e-9
    # ... and once the stream has been silent for 2.5 intervals it rests on the last command.
    t, p = run(ctl, t, 0.3)
    assert np.linalg.norm(tip(np.array(ctl.follower.goal)) - last[0]) < 1e-9
    assert np.linalg.norm(tip(p) - last[0]) < 1e-6
