"""
Motion limiting and hold logic of the slave arm, without ROS.

:class:`JointFollower` moves a joint setpoint towards a goal under per-joint velocity and
acceleration limits (a far goal is approached along a trapezoidal profile, never in a jump;
a streamed goal is followed with its velocity as feed-forward). :class:`ArmController` turns
tool-tip commands into joint goals (validation by :class:`CommandChecker`, closed-form IK) and
decides when the arm must hold: before any safety state arrived, when the state goes silent,
in HOLD and ESTOP. Every clock value is passed in (seconds, any monotonic origin).
"""
from dataclasses import dataclass
import math

import numpy as np

from telesurgery_ros.core import kinematics
from telesurgery_ros.core.command_check import CommandChecker
from telesurgery_ros.core.contract import SafetyState

JOINTS = 7     # six arm joints and the jaw opening angle
HEADROOM = 0.96


@dataclass(frozen=True)
class MotionLimits:
    """Per-joint limits (7 entries: six joints, then the jaw). SI units."""

    lower: np.ndarray
    upper: np.ndarray
    velocity: np.ndarray
    acceleration: np.ndarray
    gain: float = 60.0           # 1/s, position error -> velocity near the goal

    @classmethod
    def psm(cls, velocity_scale=1.0, acceleration_scale=1.0, gain=60.0):
        # The setpoint keeps 4 % below the URDF velocity limits: the simulated motors
        # overshoot their setpoint velocity by up to about 2 % when they accelerate.
        return cls(np.append(kinematics.LOWER, kinematics.JAW_LOWER),
                   np.append(kinematics.UPPER, kinematics.JAW_UPPER),
                   kinematics.VELOCITY_LIMITS * (HEADROOM * velocity_scale),
                   kinematics.ACCELERATION_LIMITS * acceleration_scale, gain)

    def __post_init__(self):
        # Plain floats for the per-tick loop (numpy scalars are slow to index).
        for name in ('lower', 'upper', 'velocity', 'acceleration'):
            object.__setattr__(self, name, np.asarray(getattr(self, name), float))
        object.__setattr__(self, '_lists', {n: getattr(self, n).tolist() for n in (
            'lower', 'upper', 'velocity', 'acceleration')})


class JointFollower:
    """
    A setpoint that follows a goal within velocity and acceleration limits.

    Plain Python floats on purpose: for seven joints this is several times cheaper per tick
    than numpy, and it runs at 1 kHz.
    """

    def __init__(self, limits, position):
        self.limits = limits
        self.position = [float(v) for v in position]
        self.velocity = [0.0] * len(self.position)
        self.goal = list(self.position)
        self.feed_forward = [0.0] * len(self.position)

    def set_goal(self, goal, feed_forward=None):
        """Set a new goal (clamped to the joint limits) and its own velocity, if known."""
        lists = self.limits._lists
        self.goal = [min(hi, max(lo, float(g)))
                     for g, lo, hi in zip(goal, lists['lower'], lists['upper'])]
        if feed_forward is None:
            self.clear_feed_forward()
        else:
            self.feed_forward = [min(v, max(-v, float(f)))
                                 for f, v in zip(feed_forward, lists['velocity'])]

    def clear_feed_forward(self):
        self.feed_forward = [0.0] * len(self.position)

    def hold(self, position):
        """Freeze at ``position`` (the measured joints): goal there, zero velocity."""
        self.position = np.clip(np.asarray(position, float), self.limits.lower,
                                self.limits.upper).tolist()
        self.velocity = [0.0] * len(self.position)
        self.goal = list(self.position)
        self.clear_feed_forward()

    def step(self, dt, speed_scale=1.0):
        """Advance the setpoint by ``dt`` seconds; return (position, velocity) lists."""
        lim = self.limits
        gain = lim.gain
        lists = lim._lists
        lower, upper = lists['lower'], lists['upper']
        vlim, alim = lists['velocity'], lists['acceleration']
        sqrt = math.sqrt
        position, velocity = self.position, self.velocity
        for i, (goal, pos, vel, ff) in enumerate(
                zip(self.goal, position, velocity, self.feed_forward)):
            vmax = vlim[i] * speed_scale
            adt = alim[i] * dt
            error = goal - pos
            distance = abs(error)
            # Feedback speed: proportional near the goal, and never faster than what still
            # stops at the goal with the acceleration limit (the discrete-time braking curve:
            # from v, braking by adt per step covers dt * v * (v / adt + 1) / 2).
            speed = min(gain * distance, adt * (sqrt(0.25 + 2.0 * distance / (adt * dt)) - 0.5))
            desired = ff + speed if error >= 0.0 else ff - speed
            desired = min(vmax, max(-vmax, desired))
            v = min(vel + adt, max(vel - adt, desired))
            p = pos + v * dt
            if p < lower[i]:
                p, v = lower[i], 0.0
            elif p > upper[i]:
                p, v = upper[i], 0.0
            position[i] = p
            velocity[i] = v
        return position, velocity


@dataclass(frozen=True)
class ControlConfig:
    """Behaviour of :class:`ArmController` (seconds, dimensionless scales)."""

    require_safety: bool = True        # hold until a safety state has arrived
    safety_timeout: float = 0.1        # s without safety/state -> hold on our own
    degraded_speed_scale: float = 0.5  # velocity limits x this in DEGRADED
    feed_forward_window: float = 0.1   # s, commands further apart carry no feed-forward
    extrapolation: float = 2.5         # x the command interval: goal extrapolated this long


@dataclass(frozen=True)
class CommandOutcome:
    """What happened to one tool-tip command."""

    accepted: bool                 # passed validation
    executed: bool = False         # became the arm's goal (accepted and not holding)
    reason: str = ''               # rejection reason (command_check.REASONS)
    detail: str = ''
    ik_reason: str = ''            # non-empty: the goal was clamped to the reachable set
    position: np.ndarray = None    # the pose being servoed to (after clamping)
    quaternion: np.ndarray = None


class ArmController:
    """Commands, safety state and hold logic of one arm, ticked by the control loop."""

    def __init__(self, start_joints, kin=None, limits=None, checker=None,
                 config=ControlConfig()):
        self.kin = kin or kinematics.PsmKinematics()
        self.limits = limits or MotionLimits.psm()
        self.checker = checker or CommandChecker()
        self.config = config
        self.follower = JointFollower(self.limits, start_joints)
        self.safety = None            # last SafetyStatus
        self.safety_time = None       # when it arrived
        self.hold_reason = ''
        self.holding = False
        self.interlock = ''           # set by the owner: hold for this reason until cleared
        self.ik_clamped = 0
        self.jaw_rejected = 0
        self._last_goal_stamp = None
        self._last_goal = None
        self._goal_time = None
        self._feed_forward_until = -math.inf
        self._extrapolate = None      # (goal, velocity, arrival time) of the last command
        self._pending = None          # (position, stamp) accepted while holding

    # --- inputs ---------------------------------------------------------------------------

    def on_safety(self, status, now):
        self.safety = status
        self.safety_time = now

    def command_pose(self, stamp, position, quaternion, now):
        """Validate and (unless holding) execute a tool-tip goal; never raises on numbers."""
        verdict = self.checker.check(stamp, position, quaternion, now)
        if not verdict.ok:
            return CommandOutcome(False, reason=verdict.reason, detail=verdict.detail)
        if self.holding or self.hold_cause(now):
            self._pending = (np.array(position, float), stamp)
            return CommandOutcome(True, executed=False)
        reference = self.follower.goal[:6]
        result = self.kin.ik(position, quaternion, reference)
        if not result.reachable:
            self.ik_clamped += 1
        goal = result.joints.tolist() + [self.follower.goal[6]]
        feed_forward = None
        if self._last_goal_stamp is not None:
            dt = stamp - self._last_goal_stamp
            if 0.0 < dt <= self.config.feed_forward_window:
                feed_forward = [(g - last) / dt for g, last in zip(goal, self._last_goal)]
                feed_forward[6] = 0.0
                self._feed_forward_until = now + self.config.extrapolation * dt
        self._last_goal_stamp = stamp
        self._last_goal = goal
        self.follower.set_goal(goal, feed_forward)
        self._extrapolate = None if feed_forward is None else (goal, feed_forward, now)
        return CommandOutcome(True, executed=True, ik_reason=result.reason,
                              position=result.position, quaternion=result.quaternion)

    def command_jaw(self, angle, now):
        """Set the jaw goal (rad, clamped to the jaw limits); False if rejected or holding."""
        if not math.isfinite(angle):
            self.jaw_rejected += 1
            return False
        if self.holding or self.hold_cause(now):
            return False
        goal = self.follower.goal.copy()
        goal[6] = angle
        self.follower.set_goal(goal, self.follower.feed_forward)
        return True

    # --- the loop -----------------------------------------------------------------------

    def hold_cause(self, now):
        """Why the arm must hold now ('' when motion is allowed)."""
        cfg = self.config
        if self.interlock:
            return self.interlock
        if self.safety is None:
            return 'no_safety_state' if cfg.require_safety else ''
        if now - self.safety_time > cfg.safety_timeout:
            return 'safety_silent'
        if not self.safety.state.allows_motion:
            return 'safety_' + self.safety.state.name.lower()
        return ''

    def _update_hold(self, now, measured):
        cause = self.hold_cause(now)
        if cause and not self.holding:
            self.follower.hold(measured)
            self._extrapolate = None
            self._last_goal_stamp = None
            self.holding = True
        elif not cause and self.holding:
            # Released: re-anchor the validation to the operator's current command so the
            # next one is judged against it, and stay where we are until it arrives.
            if self._pending is not None:
                self.checker.reset(*self._pending)
            else:
                self.checker.reset()
            self._pending = None
            self.holding = False
        self.hold_reason = cause

    def update(self, now, dt, measured):
        """One control tick: return the joint setpoint (position[7], velocity[7])."""
        self._update_hold(now, measured)
        if self.holding:
            return self.follower.position, self.follower.velocity
        if self._extrapolate is not None:
            # Between commands the goal moves on at the stream's own velocity, for up to
            # `extrapolation` command intervals (jitter), then rests on the last command.
            goal, velocity, arrival = self._extrapolate
            jaw = self.follower.goal[6]
            if now > self._feed_forward_until:
                self.follower.set_goal(goal)
                self._extrapolate = None
            else:
                ahead = now - arrival
                self.follower.set_goal([g + v * ahead for g, v in zip(goal, velocity)],
                                       velocity)
            self.follower.goal[6] = jaw
        scale = 1.0
        if self.safety is not None and self.safety.state == SafetyState.DEGRADED:
            scale = self.config.degraded_speed_scale
        return self.follower.step(dt, scale)
