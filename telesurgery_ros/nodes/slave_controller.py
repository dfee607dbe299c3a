"""
slave_controller: the patient-side arm in PyBullet, driven by ``psm1/servo_cp``.

A thin adapter: :mod:`telesurgery_ros.core.sim` is the physics, :mod:`~.core.arm_control`
the motion limits and hold logic, :mod:`~.core.kinematics` the RCM kinematics.

The control loop runs in its own thread (:class:`~telesurgery_ros.core.realtime.
PeriodicThread`): it sleeps to absolute deadlines at ``rate``, under ``SCHED_FIFO`` at
``realtime_priority`` where the system permits it (one warning and normal scheduling where it
does not; ``/diagnostics`` says which is in force). Each tick applies the commands and safety
states that arrived (the subscription callbacks only decode them and hand them over), steps
the physics as often as the wall clock asks (catch-up steps, at most ``max_catch_up_steps``,
the rest dropped and counted), and publishes the feedback at ``feedback_rate``. Commands and
feedback travel as CDR bytes built and read by :mod:`~telesurgery_ros.core.cdr`.

Only one publisher of ``servo_cp`` moves the arm (:mod:`~telesurgery_ros.core.command_source`):
commands of any other are refused and counted (``second_source``); after the followed
publisher has gone, a new one is followed only once the watchdog has held the arm (HOLD, then
re-alignment).
"""
import collections
import math
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, WrenchStamped
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from telesurgery_ros import rosutil
from telesurgery_ros.core import cdr, contract, kinematics
from telesurgery_ros.core.arm_control import ArmController, ControlConfig, MotionLimits
from telesurgery_ros.core.command_check import CommandChecker, CommandLimits, REASONS
from telesurgery_ros.core.command_source import ACCEPT
from telesurgery_ros.core.params import Param
from telesurgery_ros.core.realtime import PeriodicThread, shorten_gil_switch
from telesurgery_ros.core.sim import Sim
from telesurgery_ros.rosutil import run_node

# Commands and states applied in one tick at most; a burst (a stalled link catching up) is
# spread over the next ticks, in order, so that one tick never runs long.
MAX_EVENTS_PER_TICK = 32
SOURCE_INTERLOCK = 'new_command_source'


def _no_gui(value):
    if value:
        return ('the slave no longer renders (nothing that renders runs in the control '
                'process): start the arm_viewer node instead (launch argument view)')
    return None


PARAMETERS = (
    Param('arm', contract.DEFAULT_ARM, 'arm namespace: topic and frame prefix',
          read_only=True),
    Param('rate', 1000.0, 'physics and control rate', 'Hz', 50.0, 2000.0, read_only=True),
    Param('feedback_rate', 200.0, 'rate of measured_js, measured_cp and measured_cf', 'Hz',
          1.0, 1000.0),
    Param('diagnostics_rate', 2.0, 'rate of the control-loop status on /diagnostics', 'Hz',
          0.1, 20.0, read_only=True),
    Param('gui', False, 'removed: true is an error; the arm_viewer node renders the arm',
          read_only=True, check=_no_gui),
    Param('scene', True, 'load the operating table, patient and task board', read_only=True),
    Param('realtime_priority', 50,
          'SCHED_FIFO priority of the control thread, used where the system permits it '
          '(root or CAP_SYS_NICE; refused: one warning, normal scheduling); 0: normal '
          'scheduling', '', 0, 98, read_only=True),
    rosutil.executor_priority_param(40),
    Param('max_catch_up_steps', 10, 'most physics steps in one tick when the loop was late',
          '', 1, 100),
    Param('require_safety', True,
          'hold until a safety/state message has arrived (false only for tests/standalone)'),
    Param('safety_timeout', contract.SAFETY_SILENCE_TIMEOUT,
          'hold on our own when safety/state was silent this long', 's', 0.01, 5.0),
    Param('degraded_speed_scale', 0.5, 'joint velocity limits are scaled by this in DEGRADED',
          '', 0.05, 1.0),
    Param('limits.velocity_scale', 1.0, 'scale of the joint velocity limits of the URDF', '',
          0.05, 1.0),
    Param('limits.acceleration_scale', 1.0, 'scale of the joint acceleration limits', '',
          0.05, 2.0),
    Param('limits.max_speed', 0.5, 'fastest tool-tip motion a command may ask for', 'm/s',
          0.01, 2.0),
    Param('limits.jump_margin', 0.002, 'allowed on top of max_speed * dt between commands',
          'm', 0.0, 0.05),
    Param('limits.workspace_radius', 0.25, 'tool tip must be within this distance of the RCM',
          'm', 0.02, 0.3),
    Param('limits.workspace_min_depth', 0.01, 'tool tip must be at least this far below the RCM',
          'm', 0.0, 0.1),
    Param('limits.check_future_stamps', True,
          'reject command stamps ahead of our clock (sites sharing one clock)'),
    Param('limits.future_tolerance', 0.05, 'how far a command stamp may lead our clock', 's',
          0.0, 1.0),
)


class SlaveController(Node):
    """The simulated patient-side manipulator."""

    def __init__(self):
        super().__init__('slave_controller')
        # The control thread must get the GIL soon after it wakes: a short switch interval
        # bounds how long the executor thread keeps it.
        shorten_gil_switch()
        cfg = rosutil.declare_parameters(self, PARAMETERS, on_change=self._on_change)
        self.frames = contract.frames(cfg.arm)
        topics = contract.arm_topics(cfg.arm)
        self.kin = kinematics.PsmKinematics()
        home = self.kin.home_joints(contract.HOME_POSITION, contract.HOME_ORIENTATION)
        start = np.append(home, contract.HOME_JAW)
        self.dt = 1.0 / cfg.rate
        self.sim = Sim(scene=cfg.scene, time_step=self.dt)
        self.sim.reset(start)
        self.controller = ArmController(start, self.kin, self._motion_limits(cfg),
                                        CommandChecker(self._command_limits(cfg)),
                                        self._control_config(cfg))
        self.measured = self.sim.read()
        self.joint_names = list(kinematics.JOINT_NAMES) + [kinematics.JAW_NAME]
        rcm = self.frames['rcm']
        self._pose_bytes = cdr.PoseStampedEncoder(rcm)
        self._joint_bytes = cdr.JointStateEncoder(self.joint_names)

        qos = rosutil.STREAM_QOS
        self.pub_js = self.create_publisher(JointState, topics['measured_js'], qos)
        self.pub_cp = self.create_publisher(PoseStamped, topics['measured_cp'], qos)
        self.pub_setpoint = self.create_publisher(PoseStamped, topics['setpoint_cp'], qos)
        self.pub_cf = self.create_publisher(WrenchStamped, topics['measured_cf'], qos)
        self.pub_diag = self.create_publisher(DiagnosticArray, contract.DIAGNOSTICS_TOPIC,
                                              rosutil.DIAGNOSTICS_QOS)
        servo = self.create_subscription(PoseStamped, topics['servo_cp'],
                                         rosutil.with_message_info(self._on_servo_cp), qos,
                                         raw=True)
        self.create_subscription(JointState, topics['jaw_servo_jp'], self._on_jaw, qos)
        self.create_subscription(String, contract.SAFETY_STATE_TOPIC, self._on_safety,
                                 rosutil.SAFETY_QOS)
        self.gate = rosutil.SourceGate(self, servo, topics['servo_cp'])

        # Handed from the callbacks to the control thread, in arrival order.
        self._inbox = collections.deque()
        self._stats_lock = threading.Lock()
        self._log = rosutil.LogThrottle(1.0)
        self.wrong_frame = 0
        self.malformed = 0
        self.safety_malformed = 0
        self.executed = 0
        self.overruns = 0
        self.dropped_steps = 0
        self.ticks = 0
        self._periods = []
        self._costs = []
        self._latencies = []            # arrival - stamp of the commands, this report's window
        self._window_start = time.monotonic()
        self._start = None
        self._steps_done = 0
        self._window_steps = 0
        self._last_tick = None
        self._next_feedback = 0.0
        self._safety_seen = False
        self._stopped_reported = False
        self.create_timer(1.0 / cfg.diagnostics_rate, self._publish_diagnostics)
        self.create_timer(0.5, self._check_source)
        self.loop = PeriodicThread('slave-control', self.dt, self._tick,
                                   cfg.realtime_priority).start()
        schedule = self.loop.schedule
        if cfg.realtime_priority > 0 and not schedule.realtime:
            self.get_logger().warning(
                f'realtime_priority {cfg.realtime_priority} refused ({schedule.refused}): '
                'the control thread runs with normal scheduling')
        self.get_logger().info(
            f'{cfg.arm}: PyBullet DIRECT at {cfg.rate:g} Hz in a control thread '
            f'({schedule.describe()}), feedback {cfg.feedback_rate:g} Hz, home '
            f'{list(contract.HOME_POSITION)} m; '
            + ('holding until safety/state arrives' if cfg.require_safety
               else 'require_safety=false: moving without a safety state'))
        self.executor_schedule = rosutil.realtime_executor(self, cfg.executor_priority)

    # --- configuration --------------------------------------------------------------------

    @staticmethod
    def _motion_limits(cfg):
        return MotionLimits.psm(cfg.limits.velocity_scale, cfg.limits.acceleration_scale)

    @staticmethod
    def _command_limits(cfg):
        lim = cfg.limits
        return CommandLimits(max_speed=lim.max_speed, jump_margin=lim.jump_margin,
                             workspace_radius=lim.workspace_radius,
                             workspace_min_depth=lim.workspace_min_depth,
                             future_tolerance=lim.future_tolerance,
                             check_future=lim.check_future_stamps)

    @staticmethod
    def _control_config(cfg):
        return ControlConfig(require_safety=cfg.require_safety,
                             safety_timeout=cfg.safety_timeout,
                             degraded_speed_scale=cfg.degraded_speed_scale)

    def _on_change(self, cfg, names):
        self._inbox.append(('config', cfg))

    def _warn(self, key, text):
        self._log.log(self.get_logger().warning, key, text)

    # --- inputs (executor thread): decode, hand over, never touch the arm --------------------

    def _on_servo_cp(self, data, info):
        verdict = self.gate.check(info)
        source = self.gate.source
        if verdict != ACCEPT:
            self._warn('second_source', f'servo_cp refused: {source.reason(verdict)}')
            return
        if source.just_changed:
            self._inbox.append(('source', source.pinned_name))
        try:
            stamp_ns, frame, position, quaternion = cdr.decode_pose_stamped(data)
        except cdr.CdrError as exc:
            self.malformed += 1
            self._warn('malformed', f'servo_cp rejected: {exc}')
            return
        self._inbox.append(('pose', time.time(), stamp_ns, frame, position, quaternion))

    def _on_jaw(self, msg):
        if not msg.position:
            self._inbox.append(('jaw', time.time(), None))
            return
        self._inbox.append(('jaw', time.time(), float(msg.position[0])))

    def _on_safety(self, msg):
        try:
            status = contract.SafetyStatus.decode(msg.data)
        except ValueError as exc:
            self.safety_malformed += 1
            self._log.log(self.get_logger().error, 'safety', f'safety/state ignored: {exc}')
            return
        self._inbox.append(('safety', time.time(), status))

    def _check_source(self):
        gone = self.gate.refresh()
        if gone:
            self.get_logger().warning(
                f'command source {gone} has gone from servo_cp: the arm follows the next '
                'single source only after HOLD and re-alignment')

    # --- the control thread -------------------------------------------------------------

    def _apply(self):
        inbox = self._inbox
        ctl = self.controller
        # Every command is judged, in arrival order (dropping one would change how the next
        # is judged); a burst larger than a tick's share waits for the next ticks.
        for _ in range(min(len(inbox), MAX_EVENTS_PER_TICK)):
            item = inbox.popleft()             # atomic: the callbacks keep appending
            kind = item[0]
            if kind == 'pose':
                self._command(*item[1:])
            elif kind == 'safety':
                _kind, arrival, status = item
                previous = ctl.safety
                ctl.on_safety(status, arrival)
                self._safety_seen = True
                if ctl.interlock and not status.state.allows_motion:
                    ctl.interlock = ''          # the watchdog holds the arm from here on
                if previous is None or previous.state != status.state:
                    self.get_logger().info(f'safety state {status.encode()}')
            elif kind == 'jaw':
                _kind, arrival, angle = item
                if angle is None:
                    ctl.jaw_rejected += 1
                    self._warn('jaw', 'jaw/servo_jp rejected: empty position')
                elif not ctl.command_jaw(angle, arrival) and not math.isfinite(angle):
                    self._warn('jaw', 'jaw/servo_jp rejected: NaN or inf')
            elif kind == 'source':
                self.get_logger().warning(
                    f'servo_cp: new command source {item[1]}; holding until the watchdog '
                    'has held the arm and the command is re-aligned')
                ctl.checker.reset()
                if self._safety_seen or ctl.config.require_safety:
                    ctl.interlock = SOURCE_INTERLOCK
            elif kind == 'config':
                cfg = item[1]
                ctl.config = self._control_config(cfg)
                ctl.checker.limits = self._command_limits(cfg)
                ctl.limits = ctl.follower.limits = self._motion_limits(cfg)

    def _command(self, arrival, stamp_ns, frame, position, quaternion):
        with self._stats_lock:
            self._latencies.append(arrival - stamp_ns * 1e-9)
        if frame and frame != self.frames['rcm']:
            self.wrong_frame += 1
            self._warn('frame', f"servo_cp rejected: frame_id '{frame}', expected "
                       f"'{self.frames['rcm']}'")
            return
        outcome = self.controller.command_pose(stamp_ns * 1e-9, position, quaternion, arrival)
        if not outcome.accepted:
            self._warn(outcome.reason, f'servo_cp rejected ({outcome.reason}): '
                       f'{outcome.detail}')
            return
        if outcome.executed:
            self.executed += 1
            self.pub_setpoint.publish(self._pose_bytes.encode(
                stamp_ns, outcome.position, outcome.quaternion))
            if outcome.ik_reason:
                self._warn('ik', f'servo_cp beyond the joint limits ({outcome.ik_reason}): '
                           'servoing to the nearest reachable pose')

    def _tick(self, t):
        if self._start is None:
            self._start = t
            self._start_stamp = time.time()
        elif self._last_tick is not None:
            period = t - self._last_tick
            with self._stats_lock:
                self._periods.append(period)
            if period > 1.5 * self.dt:
                self.overruns += 1
        self._last_tick = t
        self.ticks += 1
        now = time.time()
        if self._inbox:
            self._apply()
        # Keep the physics on the wall clock: step as many times as the time elapsed asks.
        due = int(round((t - self._start) / self.dt)) - self._steps_done
        limit = self.config.max_catch_up_steps
        if due > limit:
            self.dropped_steps += due - limit
            self._steps_done += due - limit
            due = limit
        measured = self.measured[0]
        ctl, sim = self.controller, self.sim
        for _ in range(due):
            setpoint, velocity = ctl.update(now, self.dt, measured)
            sim.command(setpoint, velocity)
            sim.step()
        self._steps_done += due
        if due:
            self.measured = sim.read()
        if t >= self._next_feedback:
            self._next_feedback = max(self._next_feedback + 1.0 / self.config.feedback_rate,
                                      t)
            self._publish_feedback()
        cost = time.monotonic() - t
        with self._stats_lock:
            self._costs.append(cost)

    def _publish_feedback(self):
        # The time this state belongs to: the physics is locked to the clock (steps skipped
        # under overload count as elapsed), so velocities from stamps are never overstated.
        stamp_ns = int(round((self._start_stamp + self._steps_done * self.dt) * 1e9))
        position, velocity, effort = self.measured
        self.pub_js.publish(self._joint_bytes.encode(stamp_ns, position, velocity, effort))
        tip, quat = self.kin.fk_pose(position[:6])
        self.pub_cp.publish(self._pose_bytes.encode(stamp_ns, tip, quat))
        self.pub_cf.publish(cdr.encode_wrench_stamped(stamp_ns, self.frames['rcm'],
                                                      self.sim.tool_force()))

    # --- diagnostics (executor thread) ----------------------------------------------------

    def _loop_stopped(self):
        if self.loop.alive:
            return None
        error = self.loop.error
        return f'control thread stopped: {type(error).__name__}: {error}' if error else \
            'control thread stopped'

    def _publish_diagnostics(self):
        t = time.monotonic()
        window = t - self._window_start
        with self._stats_lock:
            periods = np.array(self._periods) if self._periods else np.array([self.dt])
            costs = np.array(self._costs) if self._costs else np.zeros(1)
            ticks = len(self._costs)
            latencies = np.array(self._latencies) * 1e3
            self._periods, self._costs, self._latencies = [], [], []
        self._window_start = t
        nominal = self.config.rate
        achieved = ticks / window if window > 0 else 0.0
        # Physics steps actually simulated per second of wall time: below nominal only when
        # steps were dropped, i.e. the simulated arm fell behind real time.
        steps = self._steps_done - self.dropped_steps
        physics = (steps - self._window_steps) / window if window > 0 else 0.0
        self._window_steps = steps
        late = int(np.count_nonzero(periods > 1.5 * self.dt))
        overrun_fraction = late / max(1, len(periods))
        ctl = self.controller
        safety = ctl.safety
        source = self.gate.source
        schedule = self.loop.schedule
        values = {
            'rate_hz': achieved,
            'physics_rate_hz': physics,
            'nominal_rate_hz': nominal,
            'period_p99_ms': float(np.percentile(periods, 99)) * 1e3,
            'period_jitter_p99_ms': float(np.percentile(np.abs(periods - self.dt), 99)) * 1e3,
            'overruns': self.overruns,
            'overrun_fraction': overrun_fraction,
            'dropped_steps': self.dropped_steps,
            'tick_cost_mean_us': float(costs.mean()) * 1e6,
            'tick_cost_p99_us': float(np.percentile(costs, 99)) * 1e6,
            'scheduling': schedule.describe(),
            'realtime': schedule.realtime,
            'executor_scheduling': self.executor_schedule.describe(),
            'control_thread': 'running' if self.loop.alive else 'stopped',
            'commands_accepted': ctl.checker.accepted,
            'commands_executed': self.executed,
            'commands_waiting': len(self._inbox),
            'commands_out_of_order': ctl.checker.rejected['stale_stamp'],
            # Console sample -> this node's callback (arrival - header.stamp): the one-way
            # latency the arm sees, on a clock the two sites share (NaN with no command).
            'command_latency_n': int(latencies.size),
            'command_latency_p50_ms': float(np.percentile(latencies, 50)) if latencies.size
            else math.nan,
            'command_latency_p99_ms': float(np.percentile(latencies, 99)) if latencies.size
            else math.nan,
            **{f'rejected_{r}': ctl.checker.rejected[r] for r in REASONS},
            'rejected_wrong_frame': self.wrong_frame,
            'rejected_malformed': self.malformed,
            'rejected_jaw': ctl.jaw_rejected,
            'second_source': source.second_source,
            'command_source': source.pinned_name or 'none',
            'command_source_changes': source.changes,
            'last_refused_source': source.intruder.name if source.intruder else '',
            'ik_clamped': ctl.ik_clamped,
            'safety_state': safety.state.name if safety else 'NONE',
            'safety_reason': safety.reason if safety else '',
            'safety_malformed': self.safety_malformed,
            'hold': ctl.holding,
            'hold_reason': ctl.hold_reason,
        }
        stopped = self._loop_stopped()
        # A late loop is caught up with several physics steps per tick (at most
        # max_catch_up_steps): that is a warning. Physics falling behind real time is an error.
        if stopped:
            level, message = 'ERROR', stopped
        elif physics < 0.5 * nominal:
            level, message = 'ERROR', (f'physics at {physics:.0f} Hz of {nominal:g} Hz '
                                       '(behind real time)')
        elif overrun_fraction > 0.05 or achieved < 0.9 * nominal or physics < 0.9 * nominal:
            level, message = 'WARN', (f'control loop late: {achieved:.0f} Hz, '
                                      f'{overrun_fraction:.1%} overruns')
        else:
            level, message = 'OK', f'control loop at {achieved:.0f} Hz'
        if ctl.holding:
            message += f'; holding ({ctl.hold_reason})'
        status = rosutil.diagnostic_status(f'{self.get_name()}: control loop',
                                           self.config.arm, level, message, values)
        self.pub_diag.publish(rosutil.diagnostic_array(self, [status]))
        if stopped and not self._stopped_reported:
            self._stopped_reported = True
            self.get_logger().error(stopped + ': the arm no longer moves; exiting')
            raise SystemExit(1)

    def on_shutdown(self):
        """Stop the loop, then the physics (the arm holds where it is: nothing moves it)."""
        self.loop.stop()
        self.sim.close()


def main(args=None):
    sys.exit(run_node(SlaveController, args))


if __name__ == '__main__':
    main()
