"""
safety_watchdog: fail-safe supervision of the patient side (a thin adapter).

Subscribes to the commands as they arrive from the relay, the slave's feedback, contact
force, the relay's statistics and ``/diagnostics``; the decisions are in
:class:`telesurgery_ros.core.safety.SafetySupervisor`. Publishes ``safety/state`` at
``SAFETY_STATE_RATE`` and at once on every transition, ``/diagnostics`` with every check, and
offers ``safety/estop`` and ``safety/reset`` (std_srvs/Trigger).

No polling: an observation that can change a check is evaluated at once in its callback,
and a supervision thread sleeps until the supervisor's next deadline (the last command's
arrival plus the timeout, feedback ages, the alignment dwell...), under ``SCHED_FIFO`` at
``realtime_priority`` where permitted. Commands and feedback are read from their CDR bytes
(:mod:`telesurgery_ros.core.cdr`). Only one publisher of ``servo_cp`` is the arm's command
source; commands of another are counted (``second_source``) and HOLD the arm with the reason
``second command source on <arm>/servo_cp: node <name>``.
"""
import math
import sys
import threading
import time

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, WrenchStamped
from rclpy.node import Node
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from telesurgery_ros.core import cdr, contract
from telesurgery_ros.core.command_check import CommandLimits
from telesurgery_ros.core.command_source import ACCEPT
from telesurgery_ros.core.params import Param
from telesurgery_ros.core.realtime import make_realtime, name_thread, shorten_gil_switch
from telesurgery_ros.core.safety import SafetyConfig, SafetySupervisor
from telesurgery_ros.rosutil import (
    declare_parameters, diagnostic_array, diagnostic_status, DIAGNOSTICS_QOS,
    executor_priority_param, LogThrottle, realtime_executor, run_node, SAFETY_QOS, SourceGate,
    STREAM_QOS, with_message_info)

# The supervision thread evaluates this long after a deadline: checks that compare an age
# with '>' have changed by then.
DEADLINE_MARGIN = 0.0002

_D = SafetyConfig()
_L = CommandLimits()

PARAMETERS = (
    Param('arm', contract.DEFAULT_ARM, 'arm namespace of the supervised arm', read_only=True),
    Param('shared_clock', _D.shared_clock,
          'both sites share one clock: enables the stamp-age and future-stamp checks '
          '(false for split-site deployments)'),
    Param('realtime_priority', 48,
          'SCHED_FIFO priority of the supervision thread, used where the system permits it '
          '(root or CAP_SYS_NICE; refused: one warning, normal scheduling); 0: normal '
          'scheduling', low=0, high=98, read_only=True),
    executor_priority_param(44),
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
        # The supervision thread must get the GIL soon after its deadline (see the slave).
        shorten_gil_switch()
        declare_parameters(self, PARAMETERS, on_change=self._on_change,
                           cross_check=cross_check)
        cfg = self.config
        self.supervisor = SafetySupervisor(safety_config(cfg), clock=time.monotonic,
                                           stamp_clock=time.time)
        self.loss = {'forward': LossTracker(), 'backward': LossTracker()}
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._armed = None              # the deadline the supervision thread waits for
        self._running = True
        self._log = LogThrottle(1.0)
        self.malformed = 0
        topics = contract.arm_topics(cfg.arm)
        servo = self.create_subscription(PoseStamped, topics['servo_cp'],
                                         with_message_info(self._on_servo_cp), STREAM_QOS,
                                         raw=True)
        self.create_subscription(JointState, topics['jaw_servo_jp'], self._on_jaw, STREAM_QOS)
        # Only what each check needs, read from the CDR bytes: the arrival of measured_js,
        # the pose of measured_cp, the force of measured_cf.
        self.create_subscription(JointState, topics['measured_js'], self._on_measured_js,
                                 STREAM_QOS, raw=True)
        self.create_subscription(PoseStamped, topics['measured_cp'], self._on_measured_cp,
                                 STREAM_QOS, raw=True)
        self.create_subscription(WrenchStamped, topics['measured_cf'], self._on_force,
                                 STREAM_QOS, raw=True)
        self.create_subscription(DiagnosticArray, contract.NETWORK_STATS_TOPIC,
                                 self._on_network_stats, DIAGNOSTICS_QOS)
        self.create_subscription(DiagnosticArray, contract.DIAGNOSTICS_TOPIC,
                                 self._on_diagnostics, DIAGNOSTICS_QOS)
        self.state_pub = self.create_publisher(String, contract.SAFETY_STATE_TOPIC,
                                               SAFETY_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, contract.DIAGNOSTICS_TOPIC,
                                              DIAGNOSTICS_QOS)
        self.gate = SourceGate(self, servo, topics['servo_cp'])
        self.create_service(Trigger, contract.ESTOP_SERVICE, self._on_estop)
        self.create_service(Trigger, contract.RESET_SERVICE, self._on_reset)
        self.create_timer(1.0 / contract.SAFETY_STATE_RATE, self._publish_state)
        self.create_timer(1.0 / cfg.diagnostics_rate, self._publish_diagnostics)
        self.create_timer(0.5, self._check_source)
        self._own_prefix = f'{self.get_name()}: '
        self._rate_window = None        # (time, message counts) of the last diagnostics
        self._rates = {}
        self._publish_state()
        self.schedule = None
        ready = threading.Event()
        self._thread = threading.Thread(target=self._supervise, args=(ready,),
                                        name='watchdog-deadlines', daemon=True)
        self._thread.start()
        ready.wait(5.0)
        if cfg.realtime_priority > 0 and not self.schedule.realtime:
            self.get_logger().warning(
                f'realtime_priority {cfg.realtime_priority} refused ({self.schedule.refused}): '
                'the supervision thread runs with normal scheduling')
        self.get_logger().info(
            f'supervising {cfg.arm}: state {self.supervisor.status.encode()}; commands '
            f'timeout {cfg.commands.timeout:.3f} s, shared_clock={cfg.shared_clock}, '
            f'force limit {cfg.force.limit:.1f} N; evaluated on events and deadlines '
            f'({self.schedule.describe()})')
        self.executor_schedule = realtime_executor(self, cfg.executor_priority)

    def _on_change(self, cfg, _names):
        with self._lock:
            self.supervisor.configure(safety_config(cfg))
            self.supervisor.dirty = True
            self._after_observation()

    # --- evaluation -------------------------------------------------------------------------

    def _after_observation(self):
        """With the lock held: evaluate now if needed, re-arm the thread if needed."""
        sup = self.supervisor
        if not sup.dirty:
            # Nothing changed but timestamps moving later: the armed deadline still holds
            # (the thread recomputes when it wakes).
            return
        self._announce(sup.evaluate())
        deadline = sup.next_deadline()
        if deadline is not None and (self._armed is None or deadline < self._armed):
            self._wake.notify()

    def _supervise(self, ready):
        """Run the supervision thread: sleep until the next deadline, evaluate, repeat."""
        name_thread('watchdog-deadln')
        self.schedule = make_realtime(self.config.realtime_priority)
        ready.set()
        sup = self.supervisor
        with self._lock:
            while self._running:
                now = sup.clock()
                deadline = sup.next_deadline()
                if sup.dirty or (deadline is not None and now >= deadline + DEADLINE_MARGIN):
                    self._announce(sup.evaluate())
                    continue
                self._armed = deadline
                self._wake.wait(None if deadline is None else
                                deadline + DEADLINE_MARGIN - now)
                self._armed = None

    # --- inputs --------------------------------------------------------------------------

    def _on_servo_cp(self, data, info):
        verdict = self.gate.check(info)
        if verdict != ACCEPT:
            reason = self.gate.source.reason(verdict)
            with self._lock:
                self.supervisor.on_second_source(reason)
                self._after_observation()
            self._log.log(self.get_logger().warning, 'second_source',
                          f'command refused: {reason}')
            return
        pose = self._decode(cdr.decode_pose_stamped, data, 'servo_cp')
        if pose is None:
            return
        stamp_ns, _frame, position, quaternion = pose
        with self._lock:
            if self.gate.source.just_changed:
                self.supervisor.on_source_change(
                    f'new command source on {self.gate.source.topic}: node '
                    f'{self.gate.source.pinned_name}; waiting for re-alignment')
            verdict = self.supervisor.on_command(stamp_ns * 1e-9, position, quaternion)
            self._after_observation()
        if not verdict.ok:
            self._log.log(self.get_logger().warning, verdict.reason,
                          f'command rejected ({verdict.reason}): {verdict.detail}')

    def _on_jaw(self, msg):
        with self._lock:
            ok = self.supervisor.on_jaw(list(msg.position))
            self._after_observation()
        if not ok:
            self._log.log(self.get_logger().warning, 'jaw', 'jaw command rejected: '
                          + self.supervisor.last_jaw_rejection[2])

    def _on_measured_js(self, _data):
        with self._lock:
            self.supervisor.on_measured_js()
            self._after_observation()

    def _decode(self, decoder, data, topic):
        try:
            return decoder(data)
        except cdr.CdrError as exc:
            self.malformed += 1
            self._log.log(self.get_logger().warning, 'malformed', f'{topic} ignored: {exc}')
            return None

    def _on_measured_cp(self, data):
        pose = self._decode(cdr.decode_pose_stamped, data, 'measured_cp')
        if pose is None:
            return
        with self._lock:
            self.supervisor.on_measured_cp(pose[2], pose[3])
            self._after_observation()

    def _on_force(self, data):
        force = self._decode(cdr.decode_wrench_force, data, 'measured_cf')
        if force is None:
            return
        with self._lock:
            self.supervisor.on_force(force)
            self._after_observation()

    def _on_network_stats(self, msg):
        found = []
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
            found.append((direction, p99, self.loss[direction].update(values)))
        if found:
            with self._lock:
                for item in found:
                    self.supervisor.on_network_stats(*item)
                self._after_observation()

    def _on_diagnostics(self, msg):
        found = [status for status in msg.status
                 if status.name.endswith(': control loop')
                 and not status.name.startswith(self._own_prefix)]
        if found:
            with self._lock:
                for status in found:
                    self.supervisor.on_slave_diagnostics(
                        level_name(status.level), status.message,
                        {kv.key: kv.value for kv in status.values})
                self._after_observation()

    def _check_source(self):
        gone = self.gate.refresh()
        if gone:
            self.get_logger().warning(
                f'command source {gone} has gone from {self.gate.source.topic}: the next '
                'single source is followed only after HOLD and re-alignment')

    # --- services -------------------------------------------------------------------------

    def _on_estop(self, _request, response):
        with self._lock:
            response.success, response.message, transition = self.supervisor.estop(
                'operator e-stop (safety/estop)')
            self._announce(transition)
        return response

    def _on_reset(self, _request, response):
        with self._lock:
            self._announce(self.supervisor.evaluate())   # judge the latest observations
            response.success, response.message, transition = self.supervisor.reset()
            if response.success:
                self.get_logger().info(f'safety/reset: {response.message}')
            else:
                self.get_logger().warning(f'safety/reset: {response.message}')
            self._announce(transition)
            self._after_observation()
        return response

    # --- outputs --------------------------------------------------------------------------

    def _announce(self, transition):
        """With the lock held: log a transition and publish the new state at once."""
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
        self.state_pub.publish(String(data=new.encode()))

    def _publish_state(self):
        with self._lock:
            self.state_pub.publish(String(data=self.supervisor.status.encode()))

    def _publish_diagnostics(self):
        sup = self.supervisor
        hardware = self.config.arm
        with self._lock:
            self._announce(sup.evaluate())       # the checks as of now, for the report
            summary = sup.summary()
            checks = list(sup.checks)
            counts = dict(sup.received)
        summary.update(evaluations=sup.evaluations, scheduling=self.schedule.describe(),
                       realtime=self.schedule.realtime,
                       executor_scheduling=self.executor_schedule.describe(),
                       second_source=self.gate.source.second_source,
                       command_source=self.gate.source.pinned_name or 'none',
                       command_source_changes=self.gate.source.changes,
                       last_refused_source=(self.gate.source.intruder.name
                                            if self.gate.source.intruder else ''),
                       malformed=self.malformed)
        level = {'NOMINAL': 'OK', 'DEGRADED': 'WARN'}.get(summary['state'], 'ERROR')
        statuses = [diagnostic_status(f'{self.get_name()}: state', hardware, level,
                                      sup.status.encode(), summary)]
        now = time.monotonic()
        if self._rate_window is not None:
            then, before = self._rate_window
            for key, count in counts.items():
                self._rates[f'{key}_rate_hz'] = (count - before[key]) / max(1e-6, now - then)
        self._rate_window = (now, counts)
        for check in checks:
            values = dict(check.values)
            if check.name == 'slave health':
                values.update(self._rates)
            statuses.append(diagnostic_status(f'{self.get_name()}: {check.name}', hardware,
                                              check.level, check.message, values))
        self.diag_pub.publish(diagnostic_array(self, statuses))

    def on_shutdown(self):
        """Tell the slave to hold before the watchdog goes (it would on silence anyway)."""
        with self._lock:
            self._running = False
            self._wake.notify()
        self._thread.join(2.0)
        try:
            self.state_pub.publish(String(data=contract.SafetyStatus(
                contract.SafetyState.HOLD, 'safety_watchdog shutting down').encode()))
        except Exception:  # noqa: B902 - the context may already be shut down
            pass


def main(args=None):
    sys.exit(run_node(SafetyWatchdog, args))


if __name__ == '__main__':
    main()
