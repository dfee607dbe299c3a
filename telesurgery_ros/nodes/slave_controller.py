"""
slave_controller: the patient-side arm in PyBullet, driven by ``psm1/servo_cp``.

A thin adapter: :mod:`telesurgery_ros.core.sim` is the physics, :mod:`~.core.arm_control`
the motion limits and hold logic, :mod:`~.core.kinematics` the RCM kinematics. One timer at
``rate`` steps the physics in real time (several steps when the timer was late), publishes the
feedback at ``feedback_rate`` and the loop health on /diagnostics.
"""
import math
import os
import sys
import time

from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, WrenchStamped
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from telesurgery_ros import rosutil
from telesurgery_ros.core import contract, kinematics
from telesurgery_ros.core.arm_control import ArmController, ControlConfig, MotionLimits
from telesurgery_ros.core.command_check import CommandChecker, CommandLimits, REASONS
from telesurgery_ros.core.params import Param
from telesurgery_ros.core.sim import Sim
from telesurgery_ros.rosutil import run_node

PARAMETERS = (
    Param('arm', contract.DEFAULT_ARM, 'arm namespace: topic and frame prefix',
          read_only=True),
    Param('rate', 1000.0, 'physics and control rate', 'Hz', 50.0, 2000.0, read_only=True),
    Param('feedback_rate', 200.0, 'rate of measured_js, measured_cp and measured_cf', 'Hz',
          1.0, 1000.0),
    Param('diagnostics_rate', 2.0, 'rate of the control-loop status on /diagnostics', 'Hz',
          0.1, 20.0, read_only=True),
    Param('gui', False, 'open the PyBullet GUI (camera aimed at the tool tip)',
          read_only=True),
    Param('scene', True, 'load the operating table, patient and task board', read_only=True),
    Param('realtime_priority', 0,
          'SCHED_FIFO priority of the control thread (0: normal scheduling; needs '
          'CAP_SYS_NICE, falls back with a warning)', '', 0, 98, read_only=True),
    Param('max_catch_up_steps', 10, 'most physics steps in one tick when the timer was late',
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
        cfg = rosutil.declare_parameters(self, PARAMETERS, on_change=self._on_change)
        self.frames = contract.frames(cfg.arm)
        topics = contract.arm_topics(cfg.arm)
        self.kin = kinematics.PsmKinematics()
        home = self.kin.home_joints(contract.HOME_POSITION, contract.HOME_ORIENTATION)
        start = np.append(home, contract.HOME_JAW)
        self.dt = 1.0 / cfg.rate
        self.sim = Sim(scene=cfg.scene, gui=cfg.gui, time_step=self.dt)
        self.sim.reset(start)
        if cfg.gui:
            self.sim.aim_camera()
        self.controller = ArmController(start, self.kin, self._motion_limits(cfg),
                                        CommandChecker(self._command_limits(cfg)),
                                        self._control_config(cfg))
        self.measured = self.sim.read()
        self.joint_names = list(kinematics.JOINT_NAMES) + [kinematics.JAW_NAME]

        qos = rosutil.STREAM_QOS
        self.pub_js = self.create_publisher(JointState, topics['measured_js'], qos)
        self.pub_cp = self.create_publisher(PoseStamped, topics['measured_cp'], qos)
        self.pub_setpoint = self.create_publisher(PoseStamped, topics['setpoint_cp'], qos)
        self.pub_cf = self.create_publisher(WrenchStamped, topics['measured_cf'], qos)
        self.pub_diag = self.create_publisher(DiagnosticArray, contract.DIAGNOSTICS_TOPIC,
                                              rosutil.DIAGNOSTICS_QOS)
        self.create_subscription(PoseStamped, topics['servo_cp'], self._on_servo_cp, qos)
        self.create_subscription(JointState, topics['jaw_servo_jp'], self._on_jaw, qos)
        self.create_subscription(String, contract.SAFETY_STATE_TOPIC, self._on_safety,
                                 rosutil.SAFETY_QOS)

        self.wrong_frame = 0
        self.safety_malformed = 0
        self.executed = 0
        self.overruns = 0
        self.dropped_steps = 0
        self.ticks = 0
        self._periods = []
        self._costs = []
        self._window_start = time.perf_counter()
        self._start = None
        self._steps_done = 0
        self._window_steps = 0
        self._last_tick = None
        self._next_feedback = 0.0
        self._gui = cfg.gui
        self._next_gui = 0.0
        self._set_realtime(cfg.realtime_priority)
        self.create_timer(self.dt, self._tick)
        self.create_timer(1.0 / cfg.diagnostics_rate, self._publish_diagnostics)
        self.get_logger().info(
            f'{cfg.arm}: PyBullet {"GUI" if cfg.gui else "DIRECT"} at {cfg.rate:g} Hz, '
            f'feedback {cfg.feedback_rate:g} Hz, home {list(contract.HOME_POSITION)} m; '
            + ('holding until safety/state arrives' if cfg.require_safety
               else 'require_safety=false: moving without a safety state'))

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
        ctl = self.controller
        ctl.config = self._control_config(cfg)
        ctl.checker.limits = self._command_limits(cfg)
        ctl.limits = ctl.follower.limits = self._motion_limits(cfg)

    def _set_realtime(self, priority):
        """Run this (the executor's) thread with SCHED_FIFO, as ros2_control does."""
        if priority <= 0:
            return
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
            self.get_logger().info(f'control thread at SCHED_FIFO priority {priority}')
        except (OSError, AttributeError) as exc:
            self.get_logger().warning(
                f'realtime_priority {priority} not applied ({exc}): normal scheduling')

    def _now(self):
        return self.get_clock().now().nanoseconds * 1e-9

    # --- inputs ---------------------------------------------------------------------------

    def _on_servo_cp(self, msg):
        frame = msg.header.frame_id
        if frame and frame != self.frames['rcm']:
            self.wrong_frame += 1
            self.get_logger().warning(
                f"servo_cp rejected: frame_id '{frame}', expected '{self.frames['rcm']}'",
                throttle_duration_sec=1.0)
            return
        position, quaternion = rosutil.pose_to_arrays(msg.pose)
        outcome = self.controller.command_pose(
            rosutil.stamp_to_sec(msg.header.stamp), position, quaternion, self._now())
        if not outcome.accepted:
            self.get_logger().warning(f'servo_cp rejected ({outcome.reason}): {outcome.detail}',
                                      throttle_duration_sec=1.0)
            return
        if outcome.executed:
            self.executed += 1
            self.pub_setpoint.publish(rosutil.make_pose_stamped(
                outcome.position, outcome.quaternion, self.frames['rcm'], msg.header.stamp))
            if outcome.ik_reason:
                self.get_logger().warning(
                    f'servo_cp beyond the joint limits ({outcome.ik_reason}): '
                    'servoing to the nearest reachable pose', throttle_duration_sec=1.0)

    def _on_jaw(self, msg):
        if not msg.position:
            self.controller.jaw_rejected += 1
            self.get_logger().warning('jaw/servo_jp rejected: empty position',
                                      throttle_duration_sec=1.0)
            return
        angle = float(msg.position[0])
        if not self.controller.command_jaw(angle, self._now()) and not math.isfinite(angle):
            self.get_logger().warning('jaw/servo_jp rejected: NaN or inf',
                                      throttle_duration_sec=1.0)

    def _on_safety(self, msg):
        try:
            status = contract.SafetyStatus.decode(msg.data)
        except ValueError as exc:
            self.safety_malformed += 1
            self.get_logger().error(f'safety/state ignored: {exc}', throttle_duration_sec=1.0)
            return
        previous = self.controller.safety
        self.controller.on_safety(status, self._now())
        if previous is None or previous.state != status.state:
            self.get_logger().info(f'safety state {status.encode()}')

    # --- the loop -------------------------------------------------------------------------

    def _tick(self):
        t = time.perf_counter()
        if self._start is None:
            self._start = t
            self._start_stamp = self._now()
        elif self._last_tick is not None:
            period = t - self._last_tick
            self._periods.append(period)
            if period > 1.5 * self.dt:
                self.overruns += 1
        self._last_tick = t
        self.ticks += 1
        # Keep the physics on the wall clock: step as many times as the time elapsed asks.
        due = int(round((t - self._start) / self.dt)) - self._steps_done
        limit = self.config.max_catch_up_steps
        if due > limit:
            self.dropped_steps += due - limit
            self._steps_done += due - limit
            due = limit
        now = self._now()
        measured = self.measured[0]
        ctl, sim = self.controller, self.sim
        for _ in range(due):
            setpoint, velocity = ctl.update(now, self.dt, measured)
            sim.command(setpoint, velocity)
            sim.step()
        self._steps_done += due
        if due:
            self.measured = sim.read()
        if self._gui and t >= self._next_gui:
            self._next_gui = t + 1.0 / 30.0
            sim.sync_viewer()
        if t >= self._next_feedback:
            self._next_feedback = max(self._next_feedback + 1.0 / self.config.feedback_rate,
                                      t)
            self._publish_feedback()
        self._costs.append(time.perf_counter() - t)

    def _publish_feedback(self):
        # The time this state belongs to: the physics is locked to the clock (steps skipped
        # under overload count as elapsed), so velocities from stamps are never overstated.
        stamp = rosutil.sec_to_stamp(self._start_stamp + self._steps_done * self.dt)
        position, velocity, effort = self.measured
        js = JointState(name=self.joint_names, position=position, velocity=velocity,
                        effort=effort)
        js.header.stamp = stamp
        self.pub_js.publish(js)
        tip, quat = self.kin.fk_pose(position[:6])
        self.pub_cp.publish(rosutil.make_pose_stamped(tip, quat, self.frames['rcm'], stamp))
        force = self.sim.tool_force()
        wrench = WrenchStamped()
        wrench.header.stamp = stamp
        wrench.header.frame_id = self.frames['rcm']
        wrench.wrench.force.x, wrench.wrench.force.y, wrench.wrench.force.z = (
            float(f) for f in force)
        self.pub_cf.publish(wrench)

    def _publish_diagnostics(self):
        t = time.perf_counter()
        window = t - self._window_start
        periods = np.array(self._periods) if self._periods else np.array([self.dt])
        costs = np.array(self._costs) if self._costs else np.zeros(1)
        ticks = len(self._costs)
        self._periods, self._costs, self._window_start = [], [], t
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
            'commands_accepted': ctl.checker.accepted,
            'commands_executed': self.executed,
            **{f'rejected_{r}': ctl.checker.rejected[r] for r in REASONS},
            'rejected_wrong_frame': self.wrong_frame,
            'rejected_jaw': ctl.jaw_rejected,
            'ik_clamped': ctl.ik_clamped,
            'safety_state': safety.state.name if safety else 'NONE',
            'safety_reason': safety.reason if safety else '',
            'safety_malformed': self.safety_malformed,
            'hold': ctl.holding,
            'hold_reason': ctl.hold_reason,
        }
        # A late timer is caught up with several physics steps per tick (at most
        # max_catch_up_steps): that is a warning. Physics falling behind real time is an error.
        if physics < 0.5 * nominal:
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

    def on_shutdown(self):
        """Stop the physics (the arm holds where it is: nothing moves it any more)."""
        self.sim.close()


def main(args=None):
    sys.exit(run_node(SlaveController, args))


if __name__ == '__main__':
    main()
