"""
The safety state machine and every check of the watchdog, without ROS.

The watchdog observes the patient side only (commands as they arrive from the relay, the
slave's feedback, contact force, the relay's statistics and the slave's own diagnostics) and
decides one :class:`~telesurgery_ros.core.contract.SafetyState`:

- ``NOMINAL``: everything within limits.
- ``DEGRADED``: a warning limit is exceeded (delay, loss, force, slave loop below half
  its rate): the slave slows down. Cleared after ``degraded_clear_time`` without warnings
  (no flapping).
- ``HOLD``: stale or invalid commands, feedback lost, slave loop unhealthy, delay beyond the
  hold limit. Left only when every check is back within limits AND the command has been
  re-aligned with the arm's measured pose (position and orientation) for ``alignment_dwell``
  (dVRK re-aligns before following resumes).
- ``ESTOP``: latched. Contact force above the limit, slave controller dead (once operating),
  operator e-stop, ``fault_count`` HOLD entries within ``fault_window``. Only
  :meth:`SafetySupervisor.reset` clears it, and only when the cause is gone.

Two clocks are injected: ``clock`` (monotonic-like, seconds) times the arrival of every
message; ``stamp_clock`` (the clock message stamps are written with) is read only when the two
sites share a clock (``shared_clock``) for stamp-age and future-stamp checks.

The watchdog does not poll. An observation that can change the outcome of a check sets
:attr:`SafetySupervisor.dirty` (an invalid command, a command or pose while holding, a force
crossing the warning level, feedback after a gap, statistics, the slave's diagnostics, a
second command source); every other change of outcome happens at a time known in advance
(the last command's arrival plus the timeout, feedback ages, the alignment dwell, ...), which
:meth:`SafetySupervisor.next_deadline` returns. Evaluating on dirty observations and at those
deadlines gives the same transitions as evaluating continuously (test_safety.py checks it
against a 2 kHz evaluation).
"""
from collections import deque
from dataclasses import dataclass, field, replace
import math

import numpy as np

from telesurgery_ros.core.command_check import CommandChecker, CommandLimits, REASONS
from telesurgery_ros.core.contract import SafetyState, SafetyStatus

NOMINAL, DEGRADED, HOLD, ESTOP = (SafetyState.NOMINAL, SafetyState.DEGRADED,
                                  SafetyState.HOLD, SafetyState.ESTOP)


@dataclass(frozen=True)
class SafetyConfig:
    """Every threshold of the watchdog (SI units; see config/safety_watchdog.yaml)."""

    command_timeout: float = 0.1        # s without a command arriving -> HOLD
    shared_clock: bool = True           # stamp-age and future-stamp checks need a shared clock
    command_age_warn: float = 0.1       # s, command stamp age (one-way delay) -> DEGRADED
    command_age_hold: float = 0.165     # s, command stamp age -> HOLD
    reorder_tolerance: float = 0.15     # s, an out-of-order command this little older is
    #                                     dropped (counted) without a HOLD
    limits: CommandLimits = field(default_factory=CommandLimits)
    jaw_min: float = -0.349             # rad
    jaw_max: float = 1.396              # rad
    feedback_timeout: float = 0.25      # s without measured_js/measured_cp -> HOLD
    slave_dead_timeout: float = 0.5     # s without any feedback (after it was seen) -> ESTOP
    slave_diag_timeout: float = 2.0     # s, older slave diagnostics are ignored
    slave_error_reports: int = 4        # consecutive ERROR reports of the slave loop -> HOLD
    force_warn: float = 3.0             # N -> DEGRADED
    force_limit: float = 5.0            # N -> ESTOP (latched)
    rtt_warn: float = 0.2               # s, relay p99 forward + backward -> DEGRADED
    rtt_hold: float = 0.33              # s -> HOLD
    loss_warn: float = 0.02             # fraction of messages lost -> DEGRADED
    stats_timeout: float = 5.0          # s, older relay statistics are ignored
    alignment_tolerance: float = 0.002  # m, command vs measured tool tip to leave HOLD
    alignment_angle: float = math.radians(5.0)  # rad, orientation error to leave HOLD
    alignment_dwell: float = 0.1        # s aligned, fresh and valid before HOLD -> NOMINAL
    fault_count: int = 3                # HOLD entries ...
    fault_window: float = 10.0          # ... within this many seconds -> ESTOP
    degraded_clear_time: float = 1.0    # s without warnings before DEGRADED -> NOMINAL


@dataclass
class Check:
    """The outcome of one check: the state it asks for, a message and its figures."""

    name: str
    state: SafetyState = NOMINAL
    message: str = 'ok'
    values: dict = field(default_factory=dict)
    stale: bool = False     # no data to judge (reported as STALE in diagnostics)
    warning: bool = False   # reported as WARN without changing the state

    @property
    def level(self):
        """Diagnostic level name: OK, WARN, ERROR or STALE."""
        if self.state >= HOLD:
            return 'ERROR'
        if self.state == DEGRADED or self.warning:
            return 'WARN'
        return 'STALE' if self.stale else 'OK'


@dataclass(frozen=True)
class Transition:
    """A change of state, with its cause (what the node logs)."""

    previous: SafetyStatus
    current: SafetyStatus
    time: float


def quaternion_angle(q1, q2):
    """Return the rotation angle (rad) between two unit quaternions (x, y, z, w)."""
    dot = abs(float(np.dot(q1, q2)) / (np.linalg.norm(q1) * np.linalg.norm(q2)))
    return 2.0 * math.acos(min(1.0, dot))


class SafetySupervisor:
    """Feed it observations, call :meth:`evaluate` often; it returns each transition."""

    def __init__(self, config, clock, stamp_clock=None):
        self.config = config
        self.clock = clock
        self.stamp_clock = stamp_clock if stamp_clock is not None else clock
        self.checker = CommandChecker(self._limits(config))
        now = clock()
        self.started = now
        self.status = SafetyStatus(HOLD, 'waiting for commands')
        self.since = now
        # commands
        self.last_command_arrival = None
        self.last_command = None             # (position, quaternion) last accepted
        self.last_command_age = None         # s, stamp age at arrival (shared clock only)
        self.last_rejection = None           # (time, reason, detail)
        self.out_of_order = 0
        self.re_anchored = 0
        self.jaw_rejected = 0
        self.last_jaw_rejection = None
        # slave
        self.last_js = None
        self.last_cp = None
        self.measured = None                 # (position, quaternion)
        self.feedback_seen = False
        self.slave_diag = None               # (time, level, message, values)
        self.slave_errors = 0                # consecutive ERROR reports
        self.received = {'measured_js': 0, 'measured_cp': 0}   # messages so far
        # force
        self.force = None                    # (time, magnitude)
        self.max_force = 0.0
        # network
        self.net = {}                        # direction -> (time, p99 s, loss fraction)
        # state machine
        self.latched = None                  # (kind, reason) while in ESTOP
        self.operating = False               # motion has been allowed at least once
        self.fault_times = deque()
        self.aligned_since = None
        self.warn_seen = None                # last time a warning was present
        self.transitions = 0
        self.hold_entries = 0
        self.estops = 0
        self.checks = []
        # command source (one publisher per arm)
        self.second_source = None            # (time, reason) of the last refused command
        self.source_change = None            # [time, reason, held]: a new source; HOLD
        #                                      until one evaluation has held with it
        # event-driven evaluation
        self.dirty = True                    # an observation may have changed a check
        self.evaluations = 0
        self.last_evaluation = -math.inf
        self._warning_present = False

    @staticmethod
    def _limits(config):
        return replace(config.limits, check_future=config.shared_clock)

    def configure(self, config):
        """Apply new thresholds at run time, keeping the history and the state."""
        self.config = config
        self.checker.limits = self._limits(config)

    # --- observations -----------------------------------------------------------------------

    def on_command(self, stamp, position, quaternion):
        """Judge one tool-tip command (stamp in seconds); return the checker's Verdict."""
        now = self.clock()
        stamp_now = self.stamp_clock()
        verdict = self.checker.check(stamp, position, quaternion, stamp_now)
        if verdict.ok:
            cfg = self.config
            previous_age = self.last_command_age
            if (self.last_command_arrival is None or self.status.state >= HOLD
                    or now - self.last_command_arrival > cfg.command_timeout):
                self.dirty = True
            self.last_command_arrival = now
            self.last_command = (np.asarray(position, float), np.asarray(quaternion, float))
            self.last_command_age = stamp_now - stamp if cfg.shared_clock else None
            if cfg.shared_clock and self._age_level(self.last_command_age) != self._age_level(
                    previous_age):
                self.dirty = True
            return verdict
        self.dirty = True
        if verdict.reason == 'stale_stamp' and self.checker.last_stamp is not None and (
                0.0 < self.checker.last_stamp - stamp <= self.config.reorder_tolerance):
            # Reordered by the network: dropped (the slave drops it too), not a fault.
            self.out_of_order += 1
            return verdict
        if verdict.reason == 'jump' and self.status.state >= HOLD:
            # While the arm is held the console re-anchors to the arm's pose, so its commands
            # jump once: take the new command as the reference. Alignment still gates motion.
            self.checker.reset(position, stamp)
            self.re_anchored += 1
            self.last_command_arrival = now
            self.last_command = (np.asarray(position, float), np.asarray(quaternion, float))
            return verdict
        self.last_rejection = (now, verdict.reason, verdict.detail)
        return verdict

    def _age_level(self, age):
        """0, 1 (over age_warn) or 2 (over age_hold) for a command stamp age."""
        if age is None:
            return 0
        return 2 if age > self.config.command_age_hold else int(age > self.config.command_age_warn)

    def on_jaw(self, positions):
        """Judge a jaw command (rad); invalid ones count as a command fault."""
        bad = None
        if len(positions) == 0:
            bad = 'jaw command without a position'
        elif not all(math.isfinite(v) for v in positions):
            bad = 'NaN or inf in the jaw command'
        elif not all(self.config.jaw_min <= v <= self.config.jaw_max for v in positions):
            bad = (f'jaw {max(positions, key=abs):.3f} rad outside '
                   f'{self.config.jaw_min:.3f} to {self.config.jaw_max:.3f} rad')
        if bad:
            self.dirty = True
            self.jaw_rejected += 1
            self.last_jaw_rejection = (self.clock(), 'jaw', bad)
            self.last_rejection = self.last_jaw_rejection
        return bad is None

    def _feedback_event(self, previous, now):
        # Feedback changes an outcome only after a gap (or the first time), or while holding
        # (the measured pose gates the re-alignment).
        if (previous is None or now - previous > self.config.feedback_timeout
                or self.status.state >= HOLD):
            self.dirty = True

    def on_measured_js(self):
        """Note the arrival of the slave's joint state."""
        now = self.clock()
        self._feedback_event(self.last_js, now)
        self.last_js = now
        self.feedback_seen = True
        self.received['measured_js'] += 1

    def on_measured_cp(self, position, quaternion):
        """Note the arrival of the slave's measured tool-tip pose."""
        now = self.clock()
        self._feedback_event(self.last_cp, now)
        self.last_cp = now
        self.feedback_seen = True
        self.received['measured_cp'] += 1
        self.measured = (np.asarray(position, float), np.asarray(quaternion, float))

    def on_force(self, force):
        """Note a measured contact force vector (N)."""
        f = np.asarray(force, float)
        magnitude = float(np.linalg.norm(f)) if np.all(np.isfinite(f)) else math.inf
        previous = self.force
        if magnitude > self.config.force_warn or (
                previous is None or previous[1] > self.config.force_warn):
            self.dirty = True
        self.force = (self.clock(), magnitude)
        if math.isfinite(magnitude):
            self.max_force = max(self.max_force, magnitude)

    def on_network_stats(self, direction, p99_delay, loss):
        """Relay statistics of one direction: p99 one-way delay (s) and loss fraction."""
        self.net[direction] = (self.clock(), p99_delay, loss)
        self.dirty = True

    def on_slave_diagnostics(self, level, message, values=None):
        """Note the slave's control-loop status: level 'OK', 'WARN', 'ERROR' or 'STALE'."""
        self.slave_diag = (self.clock(), level, message, dict(values or {}))
        self.slave_errors = self.slave_errors + 1 if level == 'ERROR' else 0
        self.dirty = True

    def on_second_source(self, reason):
        """Note a command from a publisher other than the arm's command source: HOLD."""
        self.second_source = (self.clock(), reason)
        self.dirty = True

    def on_source_change(self, reason):
        """Note that the arm follows a new command source: HOLD, re-alignment, then motion."""
        self.source_change = [self.clock(), reason, False]
        self.checker.reset()
        self.dirty = True

    # --- operator -----------------------------------------------------------------------------

    def estop(self, reason='operator e-stop'):
        """Latch ESTOP at the operator's request; return (success, message, transition)."""
        transition = self._latch('operator', reason, self.clock())
        return True, f'ESTOP latched: {reason}', transition

    def reset(self):
        """Clear a latched ESTOP if its cause is gone; return (success, message, transition)."""
        now = self.clock()
        if self.status.state != ESTOP:
            return False, f'nothing to reset: state is {self.status.encode()}', None
        present = self._estop_causes(now)
        if present:
            return False, 'reset refused, cause still present: ' + '; '.join(present), None
        cause = self.latched[1] if self.latched else ''
        self.latched = None
        self.fault_times.clear()
        self.aligned_since = None
        transition = self._set(HOLD, f'reset after ESTOP ({cause}); waiting for re-alignment',
                               now)
        return True, f'ESTOP cleared ({cause}); state HOLD until the command is re-aligned', \
            transition

    def _estop_causes(self, now):
        """ESTOP causes that are present now (what a reset must wait for)."""
        cfg = self.config
        causes = []
        feedback = self._feedback_age(now)
        if feedback is None or feedback > cfg.feedback_timeout:
            causes.append('slave controller down (no feedback' + (
                ')' if feedback is None else f' for {feedback:.2f} s)'))
        if self.force is not None and self.force[1] > cfg.force_limit:
            causes.append(f'contact force {self.force[1]:.2f} N > {cfg.force_limit:.2f} N')
        return causes

    # --- evaluation ---------------------------------------------------------------------------

    def _feedback_age(self, now):
        """Return the age of the older of measured_js/measured_cp (None if one never came)."""
        if self.last_js is None or self.last_cp is None:
            return None
        return now - min(self.last_js, self.last_cp)

    def _check_commands(self, now):
        cfg = self.config
        c = Check('commands')
        age = None if self.last_command_arrival is None else now - self.last_command_arrival
        c.values = {'time_since_last_s': -1.0 if age is None else age,
                    'timeout_s': cfg.command_timeout,
                    'shared_clock': cfg.shared_clock}
        if self.last_command_age is not None:
            c.values['stamp_age_s'] = self.last_command_age
        if age is None:
            c.state, c.message = HOLD, 'waiting for commands'
        elif age > cfg.command_timeout:
            c.state = HOLD
            c.message = f'commands stale ({age:.3f} s > {cfg.command_timeout:.3f} s)'
        elif cfg.shared_clock and self.last_command_age is not None and (
                self.last_command_age > cfg.command_age_hold):
            c.state = HOLD
            c.message = (f'commands delayed ({self.last_command_age:.3f} s old > '
                         f'{cfg.command_age_hold:.3f} s)')
        elif cfg.shared_clock and self.last_command_age is not None and (
                self.last_command_age > cfg.command_age_warn):
            c.state = DEGRADED
            c.message = (f'commands delayed ({self.last_command_age:.3f} s old > '
                         f'{cfg.command_age_warn:.3f} s)')
        return c

    def _check_validity(self, now):
        c = Check('command validity')
        c.values = {f'rejected_{r}': n for r, n in self.checker.rejected.items()}
        c.values.update(accepted=self.checker.accepted, rejected_jaw=self.jaw_rejected,
                        rejected_total=self.rejected_total, out_of_order=self.out_of_order,
                        re_anchored_in_hold=self.re_anchored)
        if self.last_rejection is not None:
            when, reason, detail = self.last_rejection
            c.values['last_rejection'] = f'{reason}: {detail}'
            if now - when < self.config.alignment_dwell:
                c.state = HOLD
                c.message = f'invalid command rejected ({reason}: {detail})'
        return c

    def _check_source(self, now):
        c = Check('command source')
        if self.source_change is not None:
            c.values['last_change'] = self.source_change[1]
            c.state, c.message = HOLD, self.source_change[1]
        if self.second_source is not None:
            when, reason = self.second_source
            c.values['last_refused'] = reason
            c.values['refused_age_s'] = now - when
            if now - when <= self.config.command_timeout:
                c.state, c.message = HOLD, reason
        return c

    @property
    def rejected_total(self):
        """Commands rejected so far (pose and jaw, out-of-order drops included)."""
        return sum(self.checker.rejected.values()) + self.jaw_rejected

    def _check_slave(self, now):
        cfg = self.config
        c = Check('slave health')
        ages = {name: (-1.0 if t is None else now - t)
                for name, t in (('measured_js', self.last_js), ('measured_cp', self.last_cp))}
        c.values = {f'{k}_age_s': v for k, v in ages.items()}
        newest = max((t for t in (self.last_js, self.last_cp) if t is not None), default=None)
        if self.slave_diag is not None:
            _t, level, message, values = self.slave_diag
            c.values['slave_loop_level'] = level
            c.values['slave_loop_message'] = message
            for key, value in values.items():
                c.values[f'slave_{key}'] = value
        if self.feedback_seen and newest is not None and now - newest > cfg.slave_dead_timeout:
            # Before motion was ever allowed the arm has not moved: a silent slave is still
            # starting (HOLD); once operating, it is dead (ESTOP, latched).
            c.state = ESTOP if self.operating else HOLD
            c.message = (f'slave controller dead (no feedback for {now - newest:.2f} s > '
                         f'{cfg.slave_dead_timeout:.2f} s)')
            return c
        missing = [k for k, v in ages.items() if v < 0.0]
        late = [k for k, v in ages.items() if v > cfg.feedback_timeout]
        if missing:
            c.state, c.message = HOLD, 'waiting for the slave (' + ', '.join(missing) + ')'
            return c
        if late:
            c.state = HOLD
            c.message = 'feedback lost (' + ', '.join(
                f'{k} {ages[k]:.3f} s > {cfg.feedback_timeout:.3f} s' for k in late) + ')'
            return c
        if self.slave_diag is not None and now - self.slave_diag[0] <= cfg.slave_diag_timeout:
            _t, level, message, _v = self.slave_diag
            c.values['slave_loop_error_reports'] = self.slave_errors
            if level == 'ERROR' and self.slave_errors >= cfg.slave_error_reports:
                c.state, c.message = HOLD, f'slave loop unhealthy: {message}'
            elif level == 'ERROR':
                c.state, c.message = DEGRADED, f'slave loop struggling: {message}'
            elif level == 'WARN':
                # Late ticks (a few % overruns of a 1 kHz Python timer) are reported, not
                # acted on: slowing the arm down would not make the loop punctual.
                c.warning, c.message = True, f'slave loop warning: {message}'
        return c

    def _check_force(self, now):
        cfg = self.config
        c = Check('contact force')
        if self.force is None:
            c.stale, c.message = True, 'no force measured yet'
            return c
        magnitude = self.force[1]
        c.values = {'force_n': magnitude, 'max_force_n': self.max_force,
                    'warn_n': cfg.force_warn, 'limit_n': cfg.force_limit}
        if magnitude > cfg.force_limit:
            c.state = ESTOP
            c.message = f'contact force {magnitude:.2f} N > limit {cfg.force_limit:.2f} N'
        elif magnitude > cfg.force_warn:
            c.state = DEGRADED
            c.message = f'contact force {magnitude:.2f} N > warning {cfg.force_warn:.2f} N'
        return c

    def _check_network(self, now):
        cfg = self.config
        c = Check('network')
        fresh = {d: v for d, v in self.net.items() if now - v[0] <= cfg.stats_timeout}
        for direction, (_t, p99, loss) in fresh.items():
            c.values[f'{direction}_delay_p99_s'] = p99
            c.values[f'{direction}_loss'] = loss
        if not fresh:
            c.stale, c.message = True, 'no relay statistics'
            return c
        rtt = sum(v[1] for v in fresh.values() if math.isfinite(v[1]))
        if len(fresh) == 1:
            rtt *= 2.0      # one direction known: assume a symmetric link
        loss = max(v[2] for v in fresh.values())
        c.values.update(rtt_estimate_s=rtt, rtt_warn_s=cfg.rtt_warn, rtt_hold_s=cfg.rtt_hold,
                        loss_warn=cfg.loss_warn)
        if rtt > cfg.rtt_hold:
            c.state = HOLD
            c.message = f'round trip {rtt:.3f} s > {cfg.rtt_hold:.3f} s'
        elif rtt > cfg.rtt_warn:
            c.state = DEGRADED
            c.message = f'round trip {rtt:.3f} s > {cfg.rtt_warn:.3f} s'
        elif loss > cfg.loss_warn:
            c.state = DEGRADED
            c.message = f'loss {loss * 100:.1f} % > {cfg.loss_warn * 100:.1f} %'
        return c

    def _check_alignment(self, now):
        cfg = self.config
        c = Check('alignment')
        if self.last_command is None or self.measured is None:
            c.stale, c.message = True, 'no command or no measured pose yet'
            c.values = {'aligned': False}
            return c
        error = float(np.linalg.norm(self.last_command[0] - self.measured[0]))
        angle = quaternion_angle(self.last_command[1], self.measured[1])
        aligned = error <= cfg.alignment_tolerance and angle <= cfg.alignment_angle
        c.values = {'position_error_m': error, 'angle_error_rad': angle, 'aligned': aligned,
                    'tolerance_m': cfg.alignment_tolerance, 'angle_tolerance_rad':
                    cfg.alignment_angle}
        c.message = (f'command {error * 1000:.1f} mm, {math.degrees(angle):.1f} deg from the '
                     'arm')
        return c

    def evaluate(self):
        """Run every check and step the state machine; return a Transition or None."""
        self.dirty = False
        self.evaluations += 1
        if self.source_change is not None and self.source_change[2] and (
                self.status.state >= HOLD):
            self.source_change = None       # held since the change: alignment releases
        now = self.clock()
        self.last_evaluation = now
        transition = self._step(now)
        if self.source_change is not None and self.status.state >= HOLD:
            self.source_change[2] = True
            self.dirty = True     # the next evaluation lets re-alignment take over
        return transition

    def _step(self, now):
        cfg = self.config
        checks = [self._check_commands(now), self._check_validity(now),
                  self._check_slave(now), self._check_force(now), self._check_network(now),
                  self._check_source(now)]
        alignment = self._check_alignment(now)
        self.checks = checks + [alignment]
        worst = max(checks, key=lambda c: c.state)
        # A warning lasts until the evaluation that finds it gone (with sparse evaluations
        # the previous one may be long ago): the DEGRADED clear time counts from then.
        if self._warning_present and worst.state != DEGRADED:
            self.warn_seen = now
        self._warning_present = worst.state == DEGRADED
        state = self.status.state
        if worst.state == ESTOP:
            if state == ESTOP:
                return None
            kind = 'force' if worst.name == 'contact force' else 'slave'
            return self._latch(kind, worst.message, now)
        if state == ESTOP:
            return None
        if worst.state == HOLD:
            self.aligned_since = None
            if state != HOLD:
                return self._enter_hold(worst.message, now)
            if self.status.reason != worst.message:
                self.status = SafetyStatus(HOLD, worst.message)
            return None
        if worst.state == DEGRADED:
            self.warn_seen = now
        if state == HOLD:
            return self._try_release(alignment, worst, now)
        if worst.state == DEGRADED:
            if state != DEGRADED:
                return self._set(DEGRADED, worst.message, now)
            self.status = SafetyStatus(DEGRADED, worst.message)
            return None
        if state == DEGRADED and (self.warn_seen is None
                                  or now - self.warn_seen >= cfg.degraded_clear_time):
            return self._set(NOMINAL, 'warnings cleared', now)
        return None

    def next_deadline(self):
        """
        Return the earliest time at which a check can change without a new observation.

        Return None when nothing is pending (the next change needs an observation). The
        caller evaluates once the clock has reached it (some checks change at the deadline,
        those that compare an age with ``>`` just after it: evaluate a little after). A
        deadline equal to the last evaluation's time is still returned once, so that a
        ``>`` check is evaluated again after it.
        """
        cfg = self.config
        times = []
        if self.last_command_arrival is not None:
            times.append(self.last_command_arrival + cfg.command_timeout)
        if self.last_rejection is not None:
            times.append(self.last_rejection[0] + cfg.alignment_dwell)
        if self.second_source is not None:
            times.append(self.second_source[0] + cfg.command_timeout)
        for arrival in (self.last_js, self.last_cp):
            if arrival is not None:
                times.append(arrival + cfg.feedback_timeout)
                times.append(arrival + cfg.slave_dead_timeout)
        if self.slave_diag is not None:
            times.append(self.slave_diag[0] + cfg.slave_diag_timeout)
        for received, _p99, _loss in self.net.values():
            times.append(received + cfg.stats_timeout)
        if self.aligned_since is not None:
            times.append(self.aligned_since + cfg.alignment_dwell)
        if self.status.state == DEGRADED and self.warn_seen is not None:
            times.append(self.warn_seen + cfg.degraded_clear_time)
        pending = [t for t in times if t >= self.last_evaluation]
        return min(pending) if pending else None

    def _try_release(self, alignment, worst, now):
        cfg = self.config
        if not alignment.values.get('aligned'):
            self.aligned_since = None
            self.status = SafetyStatus(HOLD, 'waiting for re-alignment: ' + alignment.message)
            return None
        if self.aligned_since is None:
            self.aligned_since = now
        if now - self.aligned_since < cfg.alignment_dwell:
            self.status = SafetyStatus(HOLD, 'aligning: ' + alignment.message)
            return None
        self.aligned_since = None
        target = DEGRADED if worst.state == DEGRADED else NOMINAL
        reason = worst.message if target == DEGRADED else 'commands fresh, valid and aligned'
        return self._set(target, reason, now)

    def _enter_hold(self, reason, now):
        cfg = self.config
        self.hold_entries += 1
        self.fault_times.append(now)
        while self.fault_times and now - self.fault_times[0] > cfg.fault_window:
            self.fault_times.popleft()
        if len(self.fault_times) >= cfg.fault_count:
            return self._latch('faults', f'repeated faults: {len(self.fault_times)} HOLDs '
                               f'within {cfg.fault_window:.0f} s (last: {reason})', now)
        return self._set(HOLD, reason, now)

    def _latch(self, kind, reason, now):
        if self.status.state == ESTOP:
            return None
        self.latched = (kind, reason)
        self.estops += 1
        self.aligned_since = None
        return self._set(ESTOP, reason, now)

    def _set(self, state, reason, now):
        previous = self.status
        if state.allows_motion:
            self.operating = True
        self.status = SafetyStatus(state, reason)
        self.since = now
        self.transitions += 1
        self.dirty = True         # a new state can change what the next evaluation decides
        return Transition(previous, self.status, now)

    def summary(self):
        """Figures of the state machine itself, for diagnostics."""
        return {'state': self.status.state.name, 'reason': self.status.reason,
                'time_in_state_s': self.clock() - self.since,
                'transitions': self.transitions, 'hold_entries': self.hold_entries,
                'estops': self.estops, 'latched': self.latched[1] if self.latched else '',
                'recent_faults': len(self.fault_times)}


__all__ = ['Check', 'REASONS', 'SafetyConfig', 'SafetySupervisor', 'Transition',
           'quaternion_angle']
