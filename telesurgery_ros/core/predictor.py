"""
A local model of the remote arm at the console: the predictive display, Smith-corrected.

:class:`Predictor` runs the slave's own command-following logic
(:class:`~telesurgery_ros.core.arm_control.ArmController`: validation, closed-form IK, joint
limits, velocity and acceleration limits, feed-forward and extrapolation, HOLD) on the console's
commands as they are made, stepped on a 1 kHz model clock as the slave steps its physics. With
no network the model is where the arm's setpoint is; behind a delay it is where the arm will be
when the command just sent reaches it (Bejczy, Kim & Venema, ICRA 1990).

The correction is a Smith predictor's: a measured pose received at console time ``r`` shows
the arm as the model was one round trip earlier, so ``bias = measured(r) - model(r - rtt)``
(position; a rotation for the orientation) is what the model got wrong, and the prediction is
``model(now) + bias``. A mismatch the model does not know (a tool stopped by contact, motor lag)
is thereby learned within one round trip. ``rtt`` is the console's measured round trip. A pose
that arrives later than usual (its ``now - header.stamp`` above the median of the last ones; a
constant offset between the two sites' clocks cancels out) is compared with the model that much
earlier: bursts on the way back do not corrupt the correction.

Contact, as the console observes it: while the measured contact force (``measured_cf``) is at
least ``contact_force``, the arm is on a surface through the last measured position, normal to
the force. The prediction then never goes into that surface (the arm cannot), and the
correction stops learning along the normal (the surface, not the model, holds the arm there),
so the prediction lifts off the surface exactly when the command does. Without it, a tool
pushed on into a surface makes the model run on into it, and the error lasts as long as the
push plus a round trip.

Safety as the console observes it: in HOLD or ESTOP as last heard the model freezes where the
arm froze (the model is rewound by the forward delay, taken as half the round trip, since the
state reaches the console at once on one machine) and the commands are ignored, exactly as the
slave ignores them; DEGRADED slows the model as it slows the slave. With no measured pose for
longer than ``feedback_timeout`` the prediction is the last measured pose, marked stale.
The echoes (``setpoint_cp`` carries the stamp of each command the slave executed) show what the
arm did: a command not echoed within the round trip plus ``echo_timeout`` means the arm stopped
executing commands (a slave that holds on its own, or stalls); the model then freezes where it
was when the last echoed command reached the arm, and follows again with the next echo.

Pure logic: every time is passed in (seconds on the console clock).
"""
import collections
from dataclasses import dataclass
import math

import numpy as np

from telesurgery_ros.core import contract, kinematics
from telesurgery_ros.core.arm_control import ArmController, ControlConfig
from telesurgery_ros.core.teleop import quat_conjugate, quat_multiply, quat_normalize
from transforms3d import quaternions

# What the prediction is (Prediction.state).
WAITING = 'waiting'            # no measured pose yet: the model alone, nothing to correct it
UNCORRECTED = 'uncorrected'    # no round trip measured yet: the model alone
PREDICTING = 'predicting'      # the model, Smith-corrected
FROZEN = 'frozen'              # HOLD/ESTOP as last heard: the arm is frozen
STALLED = 'stalled'            # commands no longer echoed: the arm stopped executing them
STALE = 'stale'                # no measured pose for feedback_timeout: the last one
STATES = (WAITING, UNCORRECTED, PREDICTING, FROZEN, STALLED, STALE)

IDENTITY = np.array([0.0, 0.0, 0.0, 1.0])
LATENCY_WINDOW = 400           # measured poses (2 s at 200 Hz) in the median apparent latency
LATENCY_REFRESH = 20           # ... recomputed every this many poses
MAX_LATENESS = 1.0             # s


@dataclass(frozen=True)
class PredictorConfig:
    """Behaviour of :class:`Predictor` (seconds)."""

    step: float = 0.001                   # s, model time step: the slave's physics period
    history: float = 3.0                  # s of model poses kept for the correction
    feedback_timeout: float = 0.25        # s without a measured pose -> stale
    correction_time_constant: float = 0.01  # s, low-pass of the correction (0: none)
    reseed_distance: float = 0.001        # m, first measured pose this far off: restart there
    max_catch_up: float = 1.0             # s, longer gaps in the model clock are skipped
    contact_force: float = 0.5            # N, measured force that means contact (0: ignore)
    echo_timeout: float = 0.1             # s beyond the round trip with no echo: stalled (0: off)
    command_decimation: int = 1           # feed the model every n-th command (CPU; 1: all)


def model_control_config(require_safety=True):
    """
    Return the slave's ControlConfig as the console can know it.

    Like the slave (by default) the model holds until a safety state is heard. The console
    cannot see the slave's own silence timeout from its side: only the states it hears count.
    """
    return ControlConfig(require_safety=require_safety, safety_timeout=math.inf)


@dataclass(frozen=True)
class Prediction:
    """The predicted tool-tip pose (RCM frame) and what it is."""

    position: np.ndarray
    quaternion: np.ndarray
    state: str

    @property
    def stale(self):
        return self.state == STALE


class Predictor:
    """The console's model of one arm, fed by its commands, corrected by its feedback."""

    def __init__(self, start_joints, kin=None, limits=None, checker=None,
                 config=PredictorConfig(), control=None):
        self.kin = kin or kinematics.PsmKinematics()
        self.config = config
        self.arm = ArmController(start_joints, self.kin, limits, checker,
                                 control or model_control_config())
        self._size = max(2, int(math.ceil(config.history / config.step)) + 1)
        self._ring = [None] * self._size
        self._t0 = None               # model clock origin (the first command's stamp)
        self._k = 0                   # model steps done
        self._reset_history(self.arm.follower.position)
        self.rtt = None               # s, round trip used by the correction
        self.bias_position = np.zeros(3)
        self.bias_rotation = IDENTITY.copy()
        self.measured = None          # (position, quaternion) last measured pose
        self.measured_time = None     # when it arrived (console clock)
        self.holding = bool(self.arm.hold_cause(0.0))
        self.contact = None           # (point, normal) of the surface the arm is pressed on
        self.contacts = 0
        self.heard = None             # last safety state heard
        self.echo_stamp = None        # newest command stamp the slave echoed
        self._unechoed = collections.deque()   # stamps of executed commands not echoed yet
        self._commands = collections.deque(maxlen=self._size)   # the console's, for replays
        self.stalled = False
        self.stalls = 0
        self._snap = False            # take the next correction at once (after a rewind)
        self._measured_stamp = None
        self._latencies = collections.deque(maxlen=LATENCY_WINDOW)
        self._latency_median = None
        self._latency_count = 0
        self._fed = 0
        self.steps = 0
        self.skipped_steps = 0
        self.reseeds = 0
        self.corrections = 0

    # --- the model clock -----------------------------------------------------------------

    def _reset_history(self, joints):
        entry = tuple(joints[:6])
        self._ring = [entry] * self._size

    @property
    def time(self):
        """Return the model clock in seconds, or None before the first command."""
        return None if self._t0 is None else self._t0 + self._k * self.config.step

    def advance(self, now):
        """Step the model up to ``now`` in steps of ``config.step`` (as the slave does)."""
        if self._t0 is None:
            return
        dt = self.config.step
        due = int(math.floor((now - self._t0) / dt + 1e-9)) - self._k
        if due <= 0:
            return
        limit = int(self.config.max_catch_up / dt)
        if due > limit:
            # The console stalled for longer than the model keeps: resume from where it was.
            self.skipped_steps += due - limit
            position = self.arm.follower.position
            self._k += due - limit
            self._reset_history(position)
            due = limit
        arm, ring, size, t0 = self.arm, self._ring, self._size, self._t0
        follower = arm.follower
        k = self._k
        for _ in range(due):
            k += 1
            position, _velocity = arm.update(t0 + k * dt, dt, follower.position)
            ring[k % size] = tuple(position[:6])
        self._k = k
        self.steps += due
        self._check_stall(now)

    def _check_stall(self, now):
        """Stall the model when a command it executed was not echoed in time."""
        timeout = self.config.echo_timeout
        if (self.stalled or not self._unechoed or self.rtt is None or timeout <= 0.0
                or now - self._unechoed[0] <= self.rtt + timeout):
            return
        self.stalled = True
        self.stalls += 1
        self._unechoed.clear()
        self._freeze(self.echo_stamp if self.echo_stamp is not None else now)
        # The slave's hold logic, as the model runs it: commands ignored until released.
        self.arm.on_safety(contract.SafetyStatus(contract.SafetyState.HOLD, 'stalled'), now)

    def joints_at(self, t):
        """Model joints (6) at time ``t``, interpolated; clamped to the history kept."""
        if self._t0 is None:
            return list(self._ring[0])
        x = (t - self._t0) / self.config.step
        x = min(float(self._k), max(float(max(0, self._k - self._size + 1)), x))
        i = int(math.floor(x))
        f = x - i
        a = self._ring[i % self._size]
        if f <= 0.0 or i >= self._k:
            return list(a)
        b = self._ring[(i + 1) % self._size]
        return [p + f * (q - p) for p, q in zip(a, b)]

    # --- inputs ------------------------------------------------------------------------

    def on_command(self, stamp, position, quaternion):
        """Feed one console command, at its own time ``stamp``; return the model's outcome."""
        if self._t0 is None:
            self._t0 = float(stamp)
            self._k = 0
        else:
            self.advance(stamp)
        self._commands.append((stamp, position, quaternion))
        self._fed += 1
        if self.stalled or (self._fed - 1) % max(1, self.config.command_decimation):
            return None                      # stalled: the arm executes nothing, nor the model
        return self._execute(stamp, position, quaternion)

    def _execute(self, stamp, position, quaternion):
        outcome = self.arm.command_pose(stamp, position, quaternion, stamp)
        if outcome.executed:
            self._unechoed.append(stamp)
        return outcome

    def on_echo(self, stamp, now):
        """Feed the stamp of a command the slave executed (its setpoint_cp), heard at ``now``."""
        if self.echo_stamp is not None and stamp <= self.echo_stamp:
            return
        self.echo_stamp = stamp
        unechoed = self._unechoed
        while unechoed and unechoed[0] <= stamp:
            unechoed.popleft()
        if self.stalled:
            self._resume(stamp, now)

    def _resume(self, stamp, now):
        """
        Resume the model: the arm executes again, from the command stamped ``stamp``.

        The model goes back to that command's time (it was frozen since before it) and runs
        the console's commands from it again, so it is where the arm is, not a round trip late.
        """
        self.stalled = False
        self._snap = True
        if self.heard is None or not self.heard.state.allows_motion:
            self.arm.on_safety(self.heard or contract.SafetyStatus(contract.SafetyState.HOLD),
                               now)
            self.advance(now)
            return
        k = int(math.floor((stamp - self._t0) / self.config.step + 1e-9))
        self._k = min(self._k, max(k, self._k - self._size + 1))
        follower = self.arm.follower
        follower.hold(list(self._ring[self._k % self._size]) + [follower.position[6]])
        self.arm.on_safety(self.heard, self.time)
        for command in [c for c in self._commands if c[0] >= stamp]:
            self.advance(command[0])
            self._execute(*command)
        self.advance(now)

    def on_safety(self, status, now):
        """Feed a safety state as heard at ``now``; a new HOLD/ESTOP freezes the model."""
        self.advance(now)
        self.heard = status
        if not status.state.allows_motion:
            self._unechoed.clear()           # holding: no echo is due
            if not self.holding and not self.stalled:
                self._freeze(now - (0.5 * self.rtt if self.rtt else 0.0))
        if not self.stalled or not status.state.allows_motion:
            self.arm.on_safety(status, now)
        self.holding = not status.state.allows_motion

    def _freeze(self, when):
        """Freeze the model where it was at ``when``, and rewrite its history after that."""
        self._snap = True
        joints = self.joints_at(when)
        follower = self.arm.follower
        follower.hold(joints + [follower.position[6]])
        frozen = tuple(follower.position[:6])
        if self._t0 is None:
            self._reset_history(frozen)
            return
        first = max(0, int(math.floor((when - self._t0) / self.config.step)) + 1,
                    self._k - self._size + 1)
        for k in range(first, self._k + 1):
            self._ring[k % self._size] = frozen

    def on_force(self, force, now):
        """Feed a measured contact force (N, RCM frame) received at ``now``."""
        limit = self.config.contact_force
        force = np.asarray(force, float)
        magnitude = float(np.linalg.norm(force))
        if limit <= 0.0 or not magnitude >= limit or self.measured is None:
            self.contact = None
            return
        if self.contact is None:
            self.contacts += 1
        self.contact = (self.measured[0], force / magnitude)

    def set_rtt(self, rtt):
        """Set the round trip (s) the correction uses (None: unknown)."""
        self.rtt = None if rtt is None or not math.isfinite(rtt) or rtt < 0 else float(rtt)

    def on_measured(self, position, quaternion, now, stamp=None):
        """
        Feed a measured pose received at ``now``: update the correction.

        ``stamp`` (optional) is the pose's header stamp, the time of the arm state, on the
        patient site's clock (any offset from ours: only its changes count). A pose that took
        longer than usual to arrive (``now - stamp`` above its median) shows the arm as it was
        that much earlier, and is compared with the model that much earlier too.
        """
        position = np.asarray(position, float)
        quaternion = quat_normalize(quaternion)
        first = self.measured is None
        if first:
            gap = math.inf
        elif stamp is not None and self._measured_stamp is not None:
            gap = stamp - self._measured_stamp      # the arm's own time between the poses
        else:
            gap = now - self.measured_time
        self.measured = (position, quaternion)
        self.measured_time = now
        self.advance(now)
        if first:
            self._reseed(position, quaternion)
        late = 0.0 if stamp is None else self._lateness(now - stamp)
        if stamp is not None:
            self._measured_stamp = stamp
        if self.rtt is None:
            return
        model_p, model_q = self.kin.fk_pose(self.joints_at(now - self.rtt - late))
        raw_p = position - model_p
        raw_q = quat_multiply(quaternion, quat_conjugate(model_q))
        if raw_q[3] < 0.0:
            raw_q = -raw_q
        tau = self.config.correction_time_constant
        if self.corrections == 0 or gap > self.config.feedback_timeout or tau <= 0.0 or (
                self._snap):
            alpha = 1.0
            self._snap = False
        else:
            alpha = 1.0 - math.exp(-max(0.0, gap) / tau)
        delta = raw_p - self.bias_position
        if self.contact is not None:
            normal = self.contact[1]
            delta = delta - float(np.dot(delta, normal)) * normal
        self.bias_position = self.bias_position + alpha * delta
        bias_q = self.bias_rotation + alpha * (raw_q - self.bias_rotation)
        self.bias_rotation = quat_normalize(bias_q)
        self.corrections += 1

    def _lateness(self, latency):
        """How much later than usual (s) a pose with this apparent latency arrived."""
        window = self._latencies
        window.append(latency)
        self._latency_count += 1
        if self._latency_median is None or self._latency_count % LATENCY_REFRESH == 0:
            self._latency_median = float(np.median(np.fromiter(window, float)))
        late = latency - self._latency_median
        # A jump of the other site's clock (or garbage) is not a delay: ignore it.
        return late if abs(late) <= MAX_LATENESS else 0.0

    def _reseed(self, position, quaternion):
        """First measured pose far from the model (a console started late): start there."""
        model_p, _q = self.kin.fk_pose(self.arm.follower.position)
        if float(np.linalg.norm(model_p - position)) <= self.config.reseed_distance:
            return
        follower = self.arm.follower
        result = self.kin.ik(position, quaternion, follower.position[:6])
        follower.hold(result.joints.tolist() + [follower.position[6]])
        self.arm.checker.reset()
        self._reset_history(follower.position)
        self.reseeds += 1

    # --- output ------------------------------------------------------------------------

    def state(self, now):
        """Return the state :meth:`predict` would give at ``now`` (one of :data:`STATES`)."""
        if self.measured is None:
            return WAITING
        if now - self.measured_time > self.config.feedback_timeout:
            return STALE
        if self.holding:
            return FROZEN
        if self.stalled:
            return STALLED
        return PREDICTING if self.rtt is not None and self.corrections else UNCORRECTED

    def model_pose(self):
        """Return the uncorrected model pose now: (position[3], quaternion[4])."""
        return self.kin.fk_pose(self.arm.follower.position)

    def predict(self, now):
        """Return the :class:`Prediction` for ``now`` (the model is stepped up to it)."""
        self.advance(now)
        state = self.state(now)
        if state == STALE or (state in (FROZEN, STALLED) and not self.corrections):
            # No feedback, or a frozen arm and no round trip to line the model up with: the
            # last measured pose is the best there is.
            position, quaternion = self.measured
            return Prediction(position.copy(), quaternion.copy(), state)
        position, quaternion = self.model_pose()
        if state in (PREDICTING, FROZEN, STALLED):
            position = position + self.bias_position
            quaternion = quat_normalize(quat_multiply(self.bias_rotation, quaternion))
            if quaternion[3] < 0.0:
                quaternion = -quaternion
        if self.contact is not None:
            point, normal = self.contact
            depth = float(np.dot(position - point, normal))
            if depth < 0.0:
                position = position - depth * normal     # onto the surface, not into it
        return Prediction(position, quaternion, state)

    def bias(self):
        """Return the size of the correction: (m, rad); for the diagnostics, not the loop."""
        x, y, z, w = self.bias_rotation
        angle = quaternions.quat2axangle((w, x, y, z))[1]
        return float(np.linalg.norm(self.bias_position)), min(angle, 2.0 * math.pi - angle)
