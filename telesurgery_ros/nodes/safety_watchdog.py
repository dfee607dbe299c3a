"""
safety_watchdog: fail-safe supervision of the patient side (a thin adapter).

Subscribes to the commands as they arrive from the relay, the slave's feedback, contact
force, the relay's statistics and ``/diagnostics``; the decisions are in
:class:`telesurgery_ros.core.safety.SafetySupervisor`. Publishes ``safety/state`` at
``SAFETY_STATE_RATE`` and at once on every transition, ``/diagnostics`` with every check, and
offers ``safety/estop`` and ``safety/reset`` (std_srvs/Trigger).
"""
import math
import sys
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from telesurgery_ros.core import contract
from telesurgery_ros.core.command_check import CommandLimits
from telesurgery_ros.core.params import Param
from telesurgery_ros.core.safety import SafetyConfig, SafetySupervisor
from telesurgery_ros.rosutil import (
    declare_parameters, diagnostic_array, diagnostic_status, DIAGNOSTICS_QOS, pose_to_arrays,
    run_node, SAFETY_QOS, stamp_to_sec, STREAM_QOS)

_D = SafetyConfig()
_L = CommandLimits()

PARAMETERS = (
    Param('arm', contract.DEFAULT_ARM, 'arm namespace of the supervised arm', read_only=True),
    Param('shared_clock', _D.shared_clock,
          'both sites share one clock: enables the stamp-age and future-stamp checks '
          '(false for split-site deployments)'),
    Param('check_rate', 200.0, 'rate of the checks (reaction time to stale commands)', 'Hz',
          low=10.0, high=1000.0, read_only=True),
    Param('diagnostics_rate', 2.0, 'rate of /diagnostics', 'Hz', low=0.1, high=50.0,
          read_only=True),
    Param('commands.timeout', _D.command_timeout,
          'time without a command arriving before HOLD', 's', low=0.005, high=5.0),
    Param('commands.age_warn', _D.command_age_warn,
          'command stamp age (one-way delay) before DEGRADED; shared clock only', 's',
          low=0.0, high=10.0),
    Param('commands.age_hold', _D.command_age_hold,
          'command stamp age (one-way delay) before HOLD; shared clock only', 's',
          low=0.0, high=10.0),
    Param('commands.reorder_tolerance', _D.reorder_tolerance,
          'an out-of-order command at most this much older than the last is dropped '
          'without a HOLD', 's', low=0.0, high=1.0),
    Param('commands.max_speed', _L.max_speed,
          'fastest tool-tip motion a command may ask for (jump check)', 'm/s',
          low=0.001, high=10.0),
    Param('commands.jump_margin', _L.jump_margin,
          'jump allowed on top of max_speed * stamp difference', 'm', low=0.0, high=0.1),
    Param('commands.quaternion_tolerance', _L.quaternion_tolerance,
          'allowed |1 - |q|| of a command quaternion', '', low=1e-6, high=0.5),
    Param('commands.workspace_radius', _L.workspace_radius,
          'tool tip within this distance of the RCM', 'm', low=0.01, high=1.0),
    Param('commands.workspace_min_depth', _L.workspace_min_depth,
          'tool tip at least this far below the RCM', 'm', low=0.0, high=0.5),
    Param('commands.future_tolerance', _L.future_tolerance,
          'a command stamp may lead the local clock by this much; shared clock only', 's',
          low=0.0, high=10.0),
    Param('jaw.min', _D.jaw_min, 'lowest valid jaw command', 'rad', low=-3.2, high=3.2),
    Param('jaw.max', _D.jaw_max, 'highest valid jaw command', 'rad', low=-3.2, high=3.2),
    Param('feedback.timeout', _D.feedback_timeout,
          'time without measured_js or measured_cp before HOLD', 's', low=0.005, high=5.0),
    Param('feedback.dead_timeout', _D.slave_dead_timeout,
          'time without any slave feedback before ESTOP (slave controller dead)', 's',
          low=0.01, high=30.0),
    Param('feedback.diagnostics_timeout', _D.slave_diag_timeout,
          "the slave's control-loop diagnostics are ignored when older than this", 's',
          low=0.1, high=60.0),
    Param('feedback.loop_error_reports', _D.slave_error_reports,
          "consecutive ERROR reports of the slave's control loop before HOLD (a single one "
          'is a warning)', '', low=1, high=100),
    Param('force.warn', _D.force_warn, 'contact force before DEGRADED', 'N',
          low=0.0, high=100.0),
    Param('force.limit', _D.force_limit, 'contact force before ESTOP (latched)', 'N',
          low=0.0, high=100.0),
    Param('network.rtt_warn', _D.rtt_warn,
          'relay p99 delay forward + backward before DEGRADED', 's', low=0.0, high=10.0),
    Param('network.rtt_hold', _D.rtt_hold,
          'relay p99 delay forward + backward before HOLD', 's', low=0.0, high=10.0),
    Param('network.loss_warn', _D.loss_warn, 'message loss fraction before DEGRADED', '',
          low=0.0, high=1.0),
    Param('network.stats_timeout', _D.stats_timeout,
          'relay statistics older than this are ignored', 's', low=0.1, high=600.0),
    Param('alignment.tolerance', _D.alignment_tolerance,
          'command-to-arm position error allowed to leave HOLD', 'm', low=0.0001, high=0.05),
    Param('alignment.angle', _D.alignment_angle,
          'command-to-arm orientation error allowed to leave HOLD', 'rad',
          low=0.001, high=math.pi),
    Param('alignment.dwell', _D.alignment_dwell,
          'time aligned, fresh and valid before HOLD is left', 's', low=0.0, high=10.0),
    Param('faults.count', _D.fault_count, 'HOLD entries within faults.window before ESTOP',
          '', low=2, high=1000),
    Param('faults.window', _D.fault_window, 'window for faults.count', 's',
          low=0.1, high=3600.0),
    Param('degraded_clear_time', _D.degraded_clear_time,
          'time without warnings before DEGRADED returns to NOMINAL', 's', low=0.0, high=60.0),
)


def cross_check(cfg):
    """Problems that involve several parameters."""
    problems = []
    pairs = (('commands.age_warn', cfg.commands.age_warn, 'commands.age_hold',
              cfg.commands.age_hold),
             ('jaw.min', cfg.jaw.min, 'jaw.max', cfg.jaw.max),
             ('feedback.timeout', cfg.feedback.timeout, 'feedback.dead_timeout',
              cfg.feedback.dead_timeout),
             ('force.warn', cfg.force.warn, 'force.limit', cfg.force.limit),
             ('network.rtt_warn', cfg.network.rtt_warn, 'network.rtt_hold',
              cfg.network.rtt_hold))
    for low_name, low, high_name, high in pairs:
        if low > high:
            problems.append(f"parameter '{low_name}' ({low}) must be <= "
                            f"'{high_name}' ({high})")
    return problems


def safety_config(cfg):
    """Parameter namespace -> SafetyConfig."""
    c = cfg.commands
    limits = CommandLimits(
        max_speed=c.max_speed, jump_margin=c.jump_margin,
        quaternion_tolerance=c.quaternion_tolerance, workspace_radius=c.workspace_radius,
        workspace_min_depth=c.workspace_min_depth, future_tolerance=c.future_tolerance,
        check_future=cfg.shared_clock)
    return SafetyConfig(
        command_timeout=c.timeout, shared_clock=cfg.shared_clock,
        command_age_warn=c.age_warn, command_age_hold=c.age_hold,
        reorder_tolerance=c.reorder_tolerance, limits=limits,
        jaw_min=cfg.jaw.min, jaw_max=cfg.jaw.max,
        feedback_timeout=cfg.feedback.timeout, slave_dead_timeout=cfg.feedback.dead_timeout,
        slave_diag_timeout=cfg.feedback.diagnostics_timeout,
        slave_error_reports=cfg.feedback.loop_error_reports,
        force_warn=cfg.force.warn, force_limit=cfg.force.limit,
        rtt_warn=cfg.network.rtt_warn, rtt_hold=cfg.network.rtt_hold,
        loss_warn=cfg.network.loss_warn, stats_timeout=cfg.network.stats_timeout,
        alignment_tolerance=cfg.alignment.tolerance, alignment_angle=cfg.alignment.angle,
        alignment_dwell=cfg.alignment.dwell, fault_count=cfg.faults.count,
        fault_window=cfg.faults.window, degraded_clear_time=cfg.degraded_clear_time)


_LEVEL_NAMES = {DiagnosticStatus.OK: 'OK', DiagnosticStatus.WARN: 'WARN',
                DiagnosticStatus.ERROR: 'ERROR', DiagnosticStatus.STALE: 'STALE'}


def level_name(level):
    """DiagnosticStatus.level (bytes or int) -> 'OK', 'WARN', 'ERROR' or 'STALE'."""
    if isinstance(level, (bytes, bytearray)):
        level = level[0] if level else 0
    for key, name in _LEVEL_NAMES.items():
        key = key[0] if isinstance(key, (bytes, bytearray)) else key
        if key == level:
            return name
    return 'ERROR'


class LossTracker:
    """Loss fraction of one relay direction from its statistics (rates or counters)."""

    def __init__(self):
        self.previous = None

    def update(self, values):
        """Return the loss fraction (0..1) from one status's key/values, or 0 if unknown."""
        for key in ('loss_ratio', 'loss_fraction'):
            if key in values:
                try:
                    fraction = float(values[key])
                except ValueError:
                    continue
                return fraction if math.isfinite(fraction) else 0.0
        try:
            seen = float(values['messages_in'])
            lost = float(values['dropped_loss'])
        except (KeyError, ValueError):
            return 0.0
        previous, self.previous = self.previous, (seen, lost)
        if previous is None or seen <= previous[0]:
            return lost / seen if seen > 0 else 0.0
        return max(0.0, (lost - previous[1]) / (seen - previous[0]))


class SafetyWatchdog(Node):
    """Decides the safety state of one arm and makes the slave stop."""

    def __init__(self):
        super().__init__('safety_watchdog')
        declare_parameters(self, PARAMETERS, on_change=self._on_change,
                           cross_check=cross_check)
        cfg = self.config
        self.supervisor = SafetySupervisor(safety_config(cfg), clock=time.monotonic,
                                           stamp_clock=self._stamp_now)
        self.loss = {'forward': LossTracker(), 'backward': LossTracker()}
        topics = contract.arm_topics(cfg.arm)
        self.create_subscription(PoseStamped, topics['servo_cp'], self._on_servo_cp,
                                 STREAM_QOS)
        self.create_subscription(JointState, topics['jaw_servo_jp'], self._on_jaw, STREAM_QOS)
        # Only the arrival of measured_js matters: take it raw, skip deserialising arrays.
        self.create_subscription(JointState, topics['measured_js'], self._on_measured_js,
                                 STREAM_QOS, raw=True)
        self.create_subscription(PoseStamped, topics['measured_cp'], self._on_measured_cp,
                                 STREAM_QOS)
        self.create_subscription(WrenchStamped, topics['measured_cf'], self._on_force,
                                 STREAM_QOS)
        self.create_subscription(DiagnosticArray, contract.NETWORK_STATS_TOPIC,
                                 self._on_network_stats, DIAGNOSTICS_QOS)
        self.create_subscription(DiagnosticArray, contract.DIAGNOSTICS_TOPIC,
                                 self._on_diagnostics, DIAGNOSTICS_QOS)
        self.state_pub = self.create_publisher(String, contract.SAFETY_STATE_TOPIC,
                                               SAFETY_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, contract.DIAGNOSTICS_TOPIC,
                                              DIAGNOSTICS_QOS)
        self.create_service(Trigger, contract.ESTOP_SERVICE, self._on_estop)
        self.create_service(Trigger, contract.RESET_SERVICE, self._on_reset)
        self.create_timer(1.0 / cfg.check_rate, self._check)
        self.create_timer(1.0 / contract.SAFETY_STATE_RATE, self._publish_state)
        self.create_timer(1.0 / cfg.diagnostics_rate, self._publish_diagnostics)
        self._own_prefix = f'{self.get_name()}: '
        self._rate_window = None        # (time, message counts) of the last diagnostics
        self._rates = {}
        self._publish_state()
        self.get_logger().info(
            f'supervising {cfg.arm}: state {self.supervisor.status.encode()}; commands '
            f'timeout {cfg.commands.timeout:.3f} s, shared_clock={cfg.shared_clock}, '
            f'force limit {cfg.force.limit:.1f} N, checks at {cfg.check_rate:.0f} Hz')

    def _stamp_now(self):
        return self.get_clock().now().nanoseconds * 1e-9

    def _on_change(self, cfg, _names):
        self.supervisor.configure(safety_config(cfg))

    # --- inputs --------------------------------------------------------------------------

    def _on_servo_cp(self, msg):
        position, quaternion = pose_to_arrays(msg.pose)
        verdict = self.supervisor.on_command(stamp_to_sec(msg.header.stamp), position,
                                             quaternion)
        if not verdict.ok:
            self.get_logger().warning(f'command rejected ({verdict.reason}): {verdict.detail}',
                                      throttle_duration_sec=1.0)
            self._check()

    def _on_jaw(self, msg):
        if not self.supervisor.on_jaw(list(msg.position)):
            self.get_logger().warning('jaw command rejected: '
                                      + self.supervisor.last_jaw_rejection[2],
                                      throttle_duration_sec=1.0)
            self._check()

    def _on_measured_js(self, _msg):
        self.supervisor.on_measured_js()

    def _on_measured_cp(self, msg):
        self.supervisor.on_measured_cp(*pose_to_arrays(msg.pose))

    def _on_force(self, msg):
        f = msg.wrench.force
        self.supervisor.on_force((f.x, f.y, f.z))

    def _on_network_stats(self, msg):
        for status in msg.status:
            direction = status.name.rpartition(': ')[2]
            if direction not in self.loss:
                continue
            values = {kv.key: kv.value for kv in status.values}
            try:
                p99 = float(values['delay_p99_ms']) * 1e-3
            except (KeyError, ValueError):
                continue
            if not math.isfinite(p99):
                continue
            self.supervisor.on_network_stats(direction, p99,
                                             self.loss[direction].update(values))

    def _on_diagnostics(self, msg):
        for status in msg.status:
            if status.name.endswith(': control loop') and not status.name.startswith(
                    self._own_prefix):
                self.supervisor.on_slave_diagnostics(
                    level_name(status.level), status.message,
                    {kv.key: kv.value for kv in status.values})

    # --- services -------------------------------------------------------------------------

    def _on_estop(self, _request, response):
        response.success, response.message, transition = self.supervisor.estop(
            'operator e-stop (safety/estop)')
        self._announce(transition)
        return response

    def _on_reset(self, _request, response):
        self._check()       # judge the causes on the latest observations
        response.success, response.message, transition = self.supervisor.reset()
        if response.success:
            self.get_logger().info(f'safety/reset: {response.message}')
        else:
            self.get_logger().warning(f'safety/reset: {response.message}')
        self._announce(transition)
        return response

    # --- outputs --------------------------------------------------------------------------

    def _check(self):
        self._announce(self.supervisor.evaluate())

    def _announce(self, transition):
        if transition is None:
            return
        old, new = transition.previous, transition.current
        text = f'{old.state.name} -> {new.state.name}: {new.reason}'
        if new.state == contract.SafetyState.ESTOP:
            self.get_logger().error(text)
        elif new.state > old.state:
            self.get_logger().warning(text)
        else:
            self.get_logger().info(text)
        self._publish_state()

    def _publish_state(self):
        self.state_pub.publish(String(data=self.supervisor.status.encode()))

    def _publish_diagnostics(self):
        sup = self.supervisor
        hardware = self.config.arm
        summary = sup.summary()
        level = {'NOMINAL': 'OK', 'DEGRADED': 'WARN'}.get(summary['state'], 'ERROR')
        statuses = [diagnostic_status(f'{self.get_name()}: state', hardware, level,
                                      sup.status.encode(), summary)]
        now = time.monotonic()
        counts = dict(sup.received)
        if self._rate_window is not None:
            then, before = self._rate_window
            for key, count in counts.items():
                self._rates[f'{key}_rate_hz'] = (count - before[key]) / max(1e-6, now - then)
        self._rate_window = (now, counts)
        for check in sup.checks:
            values = dict(check.values)
            if check.name == 'slave health':
                values.update(self._rates)
            statuses.append(diagnostic_status(f'{self.get_name()}: {check.name}', hardware,
                                              check.level, check.message, values))
        self.diag_pub.publish(diagnostic_array(self, statuses))

    def on_shutdown(self):
        """Tell the slave to hold before the watchdog goes (it would on silence anyway)."""
        try:
            self.state_pub.publish(String(data=contract.SafetyStatus(
                contract.SafetyState.HOLD, 'safety_watchdog shutting down').encode()))
        except Exception:  # noqa: B902 - the context may already be shut down
            pass


def main(args=None):
    sys.exit(run_node(SafetyWatchdog, args))


if __name__ == '__main__':
    main()
