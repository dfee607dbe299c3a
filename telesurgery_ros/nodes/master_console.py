"""
master_console: the surgeon site — hand input to tool-tip commands, and what comes back.

Publishes ``console/<arm>/servo_cp`` at ``rate``, stamped at sampling time, and
``console/<arm>/jaw/servo_jp`` when the jaw command changes (else at ``JAW_KEEPALIVE`` Hz);
listens to the arm's echoed setpoint (round-trip time), measured pose (tracking
error, re-alignment), contact force and ``safety/state``; shows a one-line status and the same
figures on ``/diagnostics``. It also runs a local model of the arm and publishes its
Smith-corrected prediction on ``console/<arm>/predicted_cp``
(:mod:`telesurgery_ros.core.predictor`), and with ``scale_policy: rtt`` lowers the motion
scaling as the round trip grows. The logic is in :mod:`telesurgery_ros.core.input_sources`,
:mod:`telesurgery_ros.core.teleop` and :mod:`telesurgery_ros.core.rtt`.
"""
import math
import sys
import time

from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseStamped, WrenchStamped
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import JointState, Joy
from std_msgs.msg import String

from telesurgery_ros import resources, terminal
from telesurgery_ros.core import cdr, contract, kinematics
from telesurgery_ros.core.command_check import CommandLimits
from telesurgery_ros.core.input_sources import (
    JoyInput, JoyMap, KEY_HELP, KeyboardInput, load_replay, ReplayInput, SHAPES,
    TrajectoryInput)
from telesurgery_ros.core.params import ConfigError, Param
from telesurgery_ros.core.predictor import Predictor, PredictorConfig
from telesurgery_ros.core.realtime import make_realtime
from telesurgery_ros.core.rtt import FeedbackMonitor, RttMonitor, status_line
from telesurgery_ros.core.teleop import (
    AdaptiveScale, FilterConfig, PoseFilter, SCALE_POLICIES, scale_problems, Teleop)
from telesurgery_ros.rosutil import (
    declare_parameters, diagnostic_array, diagnostic_status, DIAGNOSTICS_QOS,
    LATEST_QOS, run_node, SAFETY_QOS, STREAM_QOS)

INPUTS = ('trajectory', 'replay', 'keyboard', 'joy')
HAND_INPUTS = ('keyboard', 'joy')
_JOY = JoyMap()
DEFAULT_SCALE = {'hand': 0.2, 'scripted': 1.0}
TERMINAL_REFRESH = 0.25    # s, live status line on a terminal
# The jaw command goes out when it changes, and at this rate while it stays the same (a late
# joiner learns it; a lost sample is repaired): 500 Hz of an unchanged angle cost the relay,
# the slave and the watchdog a callback each per sample.
JAW_KEEPALIVE = 10.0       # Hz
RTT_REFRESH = 0.1          # s, how often the round trip p50 used by predictor and scale is read

PARAMETERS = (
    Param('arm', contract.DEFAULT_ARM, 'arm namespace of the topics', read_only=True),
    Param('input', 'trajectory', 'where the hand motion comes from', choices=INPUTS,
          read_only=True),
    Param('rate', 500.0, 'command publishing rate', 'Hz', low=10.0, high=2000.0,
          read_only=True),
    Param('scale', 0.0, 'motion scaling hand -> tool tip (position only); 0 picks the input '
          'default: 0.2 for hand input, 1.0 for scripted input', low=0.0, high=10.0),
    Param('scale_policy', 'fixed', 'motion scaling: fixed (scale), or rtt (falls from scale at '
          'rtt_low to scale_min at rtt_high; changes only while clutched or holding)',
          choices=SCALE_POLICIES),
    Param('scale_min', 0.0, 'scale_policy rtt: the scale at rtt_high and beyond; 0 = half of the '
          'scale', low=0.0, high=10.0),
    Param('rtt_low', 0.1, 'scale_policy rtt: round trip up to which the full scale applies', 's',
          low=0.0, high=10.0),
    Param('rtt_high', 0.5, 'scale_policy rtt: round trip from which scale_min applies', 's',
          low=0.001, high=10.0),
    Param('scale_rate', 0.5, 'scale_policy rtt: fastest change of the scale, as a fraction of '
          'scale per second', '1/s', low=0.01, high=100.0),
    Param('clutch', False, 'clutch engaged: the arm holds while the hand is repositioned'),
    Param('tremor_filter.mode', 'auto', 'tremor filter on the hand input; auto = on for hand '
          'input, off for scripted input', choices=('auto', 'on', 'off'), read_only=True),
    Param('tremor_filter.notch_frequency', 10.0, 'centre of the band-stop on the '
          'physiological tremor band', 'Hz', low=2.0, high=50.0, read_only=True),
    Param('tremor_filter.notch_q', 3.0, 'quality factor of the band-stop (bandwidth = '
          'frequency / q; lower q = wider band, more delay)', low=0.5, high=50.0,
          read_only=True),
    Param('tremor_filter.cutoff', 80.0, 'cutoff of the 2nd-order Butterworth low-pass in '
          'cascade with the band-stop; 0 disables it', 'Hz', low=0.0, high=900.0,
          read_only=True),
    Param('trajectory.shape', 'circle', 'scripted motion', choices=SHAPES, read_only=True),
    Param('trajectory.amplitude', 0.02, 'size of the scripted motion (radius, half width)',
          'm', low=0.0, high=0.1, read_only=True),
    Param('trajectory.frequency', 0.2, 'cycles of the scripted motion per second', 'Hz',
          low=0.01, high=2.0, read_only=True),
    Param('trajectory.center', [0.0, 0.0, 0.0], 'input-space offset of the scripted motion',
          'm', item_type=float, read_only=True,
          check=lambda v: None if len(v) == 3 else f'needs 3 values (x, y, z), got {len(v)}'),
    Param('trajectory.ramp', 1.0, 'time over which the amplitude ramps in from 0', 's',
          low=0.0, high=10.0, read_only=True),
    Param('replay.file', '', "replay CSV file; '' = the package's config/sample_replay.csv",
          read_only=True),
    Param('replay.loop', True, 'start the replay over at its end (else hold the last row)',
          read_only=True),
    Param('keyboard.step', 0.005, 'hand motion per key press (before scaling)', 'm',
          low=0.0001, high=0.05),
    Param('keyboard.angle_step', 0.05, 'rotation per key press', 'rad', low=0.001, high=0.5),
    Param('keyboard.jaw_step', 0.1, 'jaw opening per key press', 'rad', low=0.01, high=0.5),
    *(Param(f'joy.{name}', getattr(_JOY, name), f'input joy: Joy {kind} index for {what} '
            '(-1: unused)', low=-1, high=63)
      for name, kind, what in (
          ('axis_x', 'axis', 'hand motion along x (forward)'),
          ('axis_y', 'axis', 'hand motion along y (left)'),
          ('axis_z', 'axis', 'hand motion along z (up)'),
          ('axis_roll', 'axis', 'hand roll about z (the shaft at home)'),
          ('button_clutch', 'button', 'the clutch (held)'),
          ('button_jaw_open', 'button', 'opening the jaw (held)'),
          ('button_jaw_close', 'button', 'closing the jaw (held)'))),
    Param('joy.linear_speed', _JOY.linear_speed, 'input joy: hand speed at full axis '
          'deflection (before scaling)', 'm/s', low=0.001, high=1.0),
    Param('joy.angular_speed', _JOY.angular_speed, 'input joy: roll rate at full deflection',
          'rad/s', low=0.01, high=10.0),
    Param('joy.jaw_speed', _JOY.jaw_speed, 'input joy: jaw rate while a jaw button is held',
          'rad/s', low=0.01, high=10.0),
    Param('joy.timeout', _JOY.timeout, 'input joy: no console/joy message for this long stops '
          'the hand and releases the clutch', 's', low=0.05, high=10.0),
    Param('jaw_rate', 2.0, 'fastest jaw motion commanded (also the catch-up after a clutch)',
          'rad/s', low=0.1, high=20.0),
    Param('feedback_timeout', 0.25, 'in HOLD/ESTOP, pause the commands while the newest '
          'measured pose is older than this (they would be built on a stale pose)', 's',
          low=0.01, high=10.0),
    Param('rtt_window', 1000, 'round trips in the rolling p50/p99 window', low=10,
          high=100000, read_only=True),
    Param('prediction.enabled', True, 'run the local arm model and publish predicted_cp',
          read_only=True),
    Param('prediction.rate', 200.0, 'rate of predicted_cp (the slave publishes its feedback at '
          '200 Hz)', 'Hz', low=1.0, high=1000.0, read_only=True),
    Param('prediction.correction_time_constant', 0.01, 'low-pass of the Smith correction '
          '(measured pose vs the model one round trip earlier); 0 = none', 's', low=0.0,
          high=1.0),
    Param('prediction.contact_force', 0.5, 'measured contact force from which the ghost stays '
          'on the surface the arm presses on (0 = no contact model)', 'N', low=0.0, high=100.0),
    Param('prediction.echo_timeout', 0.1, 'a command not echoed (setpoint_cp) within the round '
          'trip plus this means the arm stopped executing: the ghost stops where it did (0 = '
          'never)', 's', low=0.0, high=10.0),
    Param('prediction.command_decimation', 1, 'feed the model every n-th command only (saves '
          'console CPU; the model then follows a thinner stream than the arm)', low=1, high=10),
    Param('prediction.history', 3.0, 'model poses kept for the correction: the longest round '
          'trip it can correct', 's', low=0.1, high=30.0, read_only=True),
    Param('realtime_priority', 0,
          'SCHED_FIFO priority of the thread that samples the input and publishes the '
          'commands, used where the system permits it (root or CAP_SYS_NICE; refused: one '
          'warning, normal scheduling); 0 (default): normal scheduling. On a machine the '
          'console does not share with the patient site, 40 keeps the command stream steady '
          'under load; sharing two cores with the relay and the slave, a real-time console '
          'starves their receive threads instead (doc/console.md)', low=0, high=98,
          read_only=True),
    Param('status_period', 1.0, 'period of the status line in the log when stderr is not a '
          'terminal', 's', low=0.1, high=60.0),
    Param('diagnostics_period', 1.0, 'period of the /diagnostics status', 's', low=0.05,
          high=60.0, read_only=True),
)


def base_scale(config):
    """Return the configured scale (``scale: 0`` picks the input's default)."""
    return config.scale or DEFAULT_SCALE['hand' if config.input in HAND_INPUTS else 'scripted']


def min_scale(config):
    """Return the scale at ``rtt_high`` (``scale_min: 0`` is half of the scale)."""
    return config.scale_min or 0.5 * base_scale(config)


def cross_check(config):
    """Problems that involve several parameters."""
    problems = FilterConfig(config.tremor_filter.notch_frequency, config.tremor_filter.notch_q,
                            config.tremor_filter.cutoff).problems(config.rate)
    problems += ['parameter ' + p for p in scale_problems(
        config.scale_policy, base_scale(config), min_scale(config), config.rtt_low,
        config.rtt_high)]
    if config.input == 'trajectory':
        scale = config.scale or DEFAULT_SCALE['scripted']
        traj = config.trajectory
        speed = scale * TrajectoryInput(traj.shape, traj.amplitude, traj.frequency,
                                        ramp=traj.ramp).peak_speed(rate=200.0)
        limit = CommandLimits().max_speed
        if speed > limit:
            problems.append(
                f'parameters trajectory.amplitude ({traj.amplitude} m) and '
                f'trajectory.frequency ({traj.frequency} Hz) at scale {scale} ask for '
                f'{speed:.2f} m/s at the tool tip; the arm accepts at most {limit} m/s')
    return problems


class MasterConsole(Node):
    """The surgeon's console node (thin adapter over the core teleop logic)."""

    def __init__(self):
        super().__init__('master_console')
        self.config = declare_parameters(self, PARAMETERS, self._on_change, cross_check)
        cfg = self.config
        hand = cfg.input in HAND_INPUTS
        self.keys = None
        self.source = self._make_source(cfg)
        scale = base_scale(cfg)
        self.teleop = Teleop(scale=scale, jaw_rate=cfg.jaw_rate)
        self.scaling = AdaptiveScale(cfg.scale_policy, scale, min_scale(cfg), cfg.rtt_low,
                                     cfg.rtt_high, cfg.scale_rate)
        filter_on = cfg.tremor_filter.mode == 'on' or (
            cfg.tremor_filter.mode == 'auto' and hand)
        design = FilterConfig(cfg.tremor_filter.notch_frequency, cfg.tremor_filter.notch_q,
                              cfg.tremor_filter.cutoff)
        self.filter = PoseFilter(design.sections(cfg.rate) if filter_on else [])
        self.rtt = RttMonitor(cfg.rtt_window)
        self.feedback = FeedbackMonitor()
        self.safety = None      # until the watchdog speaks, follow: the slave guards itself
        self.frame = contract.frames(cfg.arm)['rcm']
        self.jaw_name = f'{cfg.arm}_jaw'

        topics = {role: contract.console_topic(name)
                  for role, name in contract.arm_topics(cfg.arm).items()}
        self.pose_pub = self.create_publisher(PoseStamped, topics['servo_cp'], STREAM_QOS)
        self.jaw_pub = self.create_publisher(JointState, topics['jaw_servo_jp'], STREAM_QOS)
        self.diag_pub = self.create_publisher(DiagnosticArray, contract.DIAGNOSTICS_TOPIC,
                                              DIAGNOSTICS_QOS)
        # The feedback streams (200 Hz each) and the command stream (rate) are read and built
        # as raw CDR (core/cdr): no Python message object per sample (doc/benchmarks.md).
        self._pose_bytes = cdr.PoseStampedEncoder(self.frame)
        self._now_ns = self._fast_clock()
        self.create_subscription(PoseStamped, topics['measured_cp'], self._on_measured,
                                 STREAM_QOS, raw=True)
        self.create_subscription(PoseStamped, topics['setpoint_cp'], self._on_setpoint,
                                 STREAM_QOS, raw=True)
        self.create_subscription(WrenchStamped, topics['measured_cf'], self._on_force,
                                 STREAM_QOS, raw=True)
        self.create_subscription(String, contract.SAFETY_STATE_TOPIC, self._on_safety,
                                 SAFETY_QOS)
        self.joy_stale = True
        if isinstance(self.source, JoyInput):
            # joy_node publishes reliable, the viewer too: a best-effort depth-1 reader matches
            # both and only ever sees the newest state.
            self.create_subscription(Joy, contract.JOY_TOPIC, self._on_joy, LATEST_QOS)
        self.predictor = self._make_predictor(cfg)
        self.prediction = None
        self.predictions_published = 0
        self.predicted_pub = None if self.predictor is None else self.create_publisher(
            PoseStamped, contract.predicted_topic(cfg.arm), STREAM_QOS)
        self._rtt_p50 = math.nan
        self._next_rtt_ns = 0
        self._next_prediction_ns = 0
        self._last_tick_ns = None
        self._prediction_cost = 0.0      # s of CPU (this thread) spent in the predictor ...
        self._cost_window_ns = None      # ... since this time

        self.last_stamp_ns = 0
        self.start_ns = self.get_clock().now().nanoseconds
        self.arm_heard_ns = None
        self.measured_rx_ns = None
        self.paused = False
        self.published = 0
        self._jaw_sent = (math.nan, 0)      # (angle, stamp ns) of the last jaw command sent
        self.tty = sys.stderr.isatty()
        self.last_log_ns = 0
        # The executor runs on this thread: the command timer, the feedback callbacks and
        # the predictor all get its scheduling.
        self.schedule = make_realtime(cfg.realtime_priority)
        if cfg.realtime_priority > 0 and not self.schedule.realtime:
            self.get_logger().warning(
                f'realtime_priority {cfg.realtime_priority} refused ({self.schedule.refused}): '
                'the command thread runs with normal scheduling')
        self.create_timer(1.0 / cfg.rate, self._tick)
        self.create_timer(TERMINAL_REFRESH if self.tty else cfg.status_period, self._status)
        self.create_timer(cfg.diagnostics_period, self._diagnostics)
        if self.keys is not None:
            terminal.write_terminal(KEY_HELP)
            self.keys.start()
        self.get_logger().info(
            f'input {cfg.input}'
            + (f' ({cfg.trajectory.shape})' if cfg.input == 'trajectory' else '')
            + f', {cfg.rate:g} Hz, scale {scale:g}'
            + (f' (rtt policy: down to {self.scaling.scale_min:g} from {cfg.rtt_low:g} to '
               f'{cfg.rtt_high:g} s)' if cfg.scale_policy == 'rtt' else '')
            + ', tremor filter '
            + (f'on (notch {design.notch_frequency:g} Hz q {design.notch_q:g}, low-pass '
               f'{design.cutoff:g} Hz)' if filter_on else 'off')
            + (f', predicted_cp at {cfg.prediction.rate:g} Hz' if self.predictor else
               ', prediction off') + f'; {self.schedule.describe()}')

    def _make_predictor(self, cfg):
        if not cfg.prediction.enabled:
            return None
        kin = kinematics.PsmKinematics()
        home = kin.home_joints(contract.HOME_POSITION, contract.HOME_ORIENTATION)
        return Predictor(list(home) + [contract.HOME_JAW], kin,
                         config=self._predictor_config(cfg))

    @staticmethod
    def _predictor_config(cfg):
        return PredictorConfig(
            history=cfg.prediction.history, feedback_timeout=cfg.feedback_timeout,
            correction_time_constant=cfg.prediction.correction_time_constant,
            contact_force=cfg.prediction.contact_force,
            echo_timeout=cfg.prediction.echo_timeout,
            command_decimation=cfg.prediction.command_decimation)

    def _make_source(self, cfg):
        if cfg.input == 'trajectory':
            t = cfg.trajectory
            return TrajectoryInput(t.shape, t.amplitude, t.frequency, t.center, t.ramp)
        if cfg.input == 'replay':
            path = cfg.replay.file or resources.data_path('config', 'sample_replay.csv')
            return ReplayInput(load_replay(path), loop=cfg.replay.loop)
        if cfg.input == 'joy':
            return JoyInput(self._joy_map(cfg))
        if not terminal.stdin_is_tty():
            raise ConfigError([
                "parameter 'input': 'keyboard' needs an interactive terminal on stdin, and "
                'stdin is not a TTY (use input:=trajectory or input:=replay)'])
        self.keys = terminal.KeyReader()
        return KeyboardInput(cfg.keyboard.step, cfg.keyboard.angle_step, cfg.keyboard.jaw_step)

    @staticmethod
    def _joy_map(cfg):
        return JoyMap(**vars(cfg.joy))

    def _on_change(self, config, names):
        scaling = {'scale', 'scale_policy', 'scale_min', 'rtt_low', 'rtt_high', 'scale_rate'}
        if scaling & set(names):
            current = self.scaling.effective
            self.scaling = AdaptiveScale(config.scale_policy, base_scale(config),
                                         min_scale(config), config.rtt_low, config.rtt_high,
                                         config.scale_rate)
            if config.scale_policy == 'rtt' and 'scale' not in names:
                self.scaling.effective = current    # the policy's own rules move it from here
            self.teleop.set_scale(self.scaling.effective)
        if self.predictor is not None and {
                'feedback_timeout', 'prediction.correction_time_constant',
                'prediction.contact_force', 'prediction.echo_timeout',
                'prediction.command_decimation'} & set(names):
            self.predictor.config = self._predictor_config(config)
        if 'jaw_rate' in names:
            self.teleop.jaw_rate = config.jaw_rate
        if isinstance(self.source, KeyboardInput):
            self.source.step = config.keyboard.step
            self.source.angle_step = config.keyboard.angle_step
            self.source.jaw_step = config.keyboard.jaw_step
        if isinstance(self.source, JoyInput):
            self.source.mapping = self._joy_map(config)

    # --- the command stream ------------------------------------------------------------

    def _fast_clock(self):
        """
        Return a function giving the node clock's time in ns.

        Without simulated time the node clock is the system clock, and :func:`time.time_ns`
        reads it at a fraction of ``get_clock().now()``'s cost (called several thousand times a
        second here); with ``use_sim_time`` the ROS clock is used.
        """
        if self.get_parameter('use_sim_time').value:
            clock = self.get_clock()
            return lambda: clock.now().nanoseconds
        return time.time_ns

    def _next_stamp_ns(self):
        now = self._now_ns()
        stamp = max(now, self.last_stamp_ns + 1)     # unique and increasing
        self.last_stamp_ns = stamp
        return stamp

    def _tick(self):
        if self.keys is not None:
            for key in self.keys.drain():
                done = self.source.press(key)
                if done:
                    self.get_logger().debug(f'key {key!r}: {done}')
        stamp_ns = self._next_stamp_ns()
        t = (stamp_ns - self.start_ns) * 1e-9
        # Scripts and recordings start when the arm is first heard from (the commands wait
        # at home until then), so their ramp-in happens where the arm is.
        if self.arm_heard_ns is None and self.teleop.measured_position is not None:
            self.arm_heard_ns = stamp_ns
            self.get_logger().info('arm heard from: the motion starts at its measured pose')
        sample = self.source.sample(self._source_time(stamp_ns))
        if isinstance(self.source, JoyInput):
            self._watch_joy(stamp_ns)
        position, orientation = self.filter(sample.position, sample.orientation)
        self.teleop.set_clutch(self.config.clutch or sample.clutch)
        allowed = self.safety is None or self.safety.state.allows_motion
        if stamp_ns >= self._next_rtt_ns:
            self._next_rtt_ns = stamp_ns + int(RTT_REFRESH * 1e9)
            self._rtt_p50 = self.rtt.percentile(50.0)
        dt = 0.0 if self._last_tick_ns is None else (stamp_ns - self._last_tick_ns) * 1e-9
        self._last_tick_ns = stamp_ns
        scale = self.scaling.update(dt, self._rtt_p50, self.teleop.clutch or not allowed)
        if scale != self.teleop.scale:
            self.teleop.set_scale(scale)
        fresh = self.measured_rx_ns is not None and (
            stamp_ns - self.measured_rx_ns <= self.config.feedback_timeout * 1e9)
        command = self.teleop.step(t, position, orientation, sample.jaw,
                                   motion_allowed=allowed, feedback_fresh=fresh)
        if (command is None) != self.paused:
            self.paused = command is None
            self.get_logger().info(
                'commands paused: holding with no fresh measured pose from the arm'
                if self.paused else 'commands resumed at the measured pose of the arm')
        if command is not None:
            self._publish(command, stamp_ns)
        if self.predictor is not None:
            self._predict(command, stamp_ns, t)

    def _predict(self, command, stamp_ns, t):
        """Feed the model this cycle's command; publish the prediction at prediction.rate."""
        started = time.thread_time()
        predictor = self.predictor
        if command is not None:
            predictor.on_command(t, command.position, command.orientation)
        if stamp_ns >= self._next_prediction_ns:
            period = int(1e9 / self.config.prediction.rate)
            self._next_prediction_ns = max(self._next_prediction_ns + period, stamp_ns)
            predictor.set_rtt(self._rtt_p50)
            self.prediction = predictor.predict(t)
            self.predicted_pub.publish(self._pose_bytes.encode(
                stamp_ns, self.prediction.position, self.prediction.quaternion))
            self.predictions_published += 1
        self._prediction_cost += time.thread_time() - started

    def _console_time(self, nanoseconds=None):
        """Seconds since start on the console clock (the predictor's clock)."""
        if nanoseconds is None:
            nanoseconds = self._now_ns()
        return (nanoseconds - self.start_ns) * 1e-9

    def _source_time(self, now_ns):
        """Return the input source's clock: s since the arm was first heard from (0 before)."""
        return 0.0 if self.arm_heard_ns is None else (now_ns - self.arm_heard_ns) * 1e-9

    def _on_joy(self, msg):
        self.source.on_joy(msg.axes, msg.buttons,
                           self._source_time(self.get_clock().now().nanoseconds))

    def _watch_joy(self, stamp_ns):
        stale = not self.source.fresh(self._source_time(stamp_ns))
        if stale != self.joy_stale:
            self.joy_stale = stale
            if stale:
                self.get_logger().info(
                    f'{contract.JOY_TOPIC} silent for {self.config.joy.timeout:g} s: the hand '
                    'stops (clutch released)' if self.source.messages else
                    f'waiting for {contract.JOY_TOPIC} (the viewer keys or a joy_node)')
            else:
                self.get_logger().info(f'{contract.JOY_TOPIC}: hand input live')

    def _publish(self, command, stamp_ns):
        self.pose_pub.publish(self._pose_bytes.encode(stamp_ns, command.position,
                                                      command.orientation))
        angle = float(command.jaw)
        if angle != self._jaw_sent[0] or stamp_ns - self._jaw_sent[1] >= 1e9 / JAW_KEEPALIVE:
            self._jaw_sent = (angle, stamp_ns)
            jaw = JointState(name=[self.jaw_name], position=[angle])
            jaw.header.stamp = _time_msg(stamp_ns)
            self.jaw_pub.publish(jaw)
        self.published += 1

    def on_shutdown(self):
        """Leave the arm holding where it is (like teleop_twist_keyboard's zero twist)."""
        if self.keys is not None:
            self.keys.close()
            terminal.write_terminal('\n')
        try:
            # A few copies a cycle apart, then a moment for the transport to send them: the
            # stream is best effort and the process is about to go.
            for _ in range(3):
                self._publish(self.teleop.hold_command(), self._next_stamp_ns())
                time.sleep(1.0 / self.config.rate)
            time.sleep(0.05)
        except Exception as exc:  # noqa: B902 - the context may already be shut down
            self.get_logger().warning(f'could not send the final hold command: {exc}')

    # --- feedback ----------------------------------------------------------------------

    def _decode(self, decode, data, topic):
        try:
            return decode(data)
        except cdr.CdrError as exc:
            self.get_logger().warning(f'ignoring {topic}: {exc}', throttle_duration_sec=5.0)
            return None

    def _on_measured(self, data):
        pose = self._decode(cdr.decode_pose_stamped, data, 'measured_cp')
        if pose is None:
            return
        stamp_ns, _frame, position, orientation = pose
        if _finite(position, orientation):
            position, orientation = np.array(position), np.array(orientation)
            self.measured_rx_ns = self._now_ns()
            self.teleop.set_measured(position, orientation)
            self.feedback.on_measured(position, orientation)
            if self.predictor is not None:
                started = time.thread_time()
                self.predictor.on_measured(
                    position, orientation, self._console_time(self.measured_rx_ns),
                    self._console_time(stamp_ns))
                self._prediction_cost += time.thread_time() - started

    def _on_setpoint(self, data):
        now_ns = self._now_ns()
        pose = self._decode(cdr.decode_pose_stamped, data, 'setpoint_cp')
        if pose is None:
            return
        stamp_ns, _frame, position, orientation = pose
        self.rtt.on_echo(stamp_ns * 1e-9, now_ns * 1e-9)
        if self.predictor is not None:
            started = time.thread_time()
            self.predictor.on_echo(self._console_time(stamp_ns), self._console_time(now_ns))
            self._prediction_cost += time.thread_time() - started
        if _finite(position, orientation):
            self.feedback.on_setpoint(np.array(position), np.array(orientation))

    def _on_force(self, data):
        force = self._decode(cdr.decode_wrench_force, data, 'measured_cf')
        if force is None:
            return
        self.feedback.on_force(force)
        if self.predictor is not None:
            started = time.thread_time()
            self.predictor.on_force(force, self._console_time())
            self._prediction_cost += time.thread_time() - started

    def _on_safety(self, msg):
        try:
            status = contract.SafetyStatus.decode(msg.data)
        except ValueError as exc:
            self.get_logger().warning(f'ignoring safety/state: {exc}',
                                      throttle_duration_sec=5.0)
            return
        if self.safety is None or status.state != self.safety.state:
            self.get_logger().info(f'safety state {status.encode()}')
        self.safety = status
        if self.predictor is not None:
            self.predictor.on_safety(status, self._console_time())

    # --- status ------------------------------------------------------------------------

    def _figures(self):
        rtt = self.rtt.summary()
        tracking, tracking_angle = self.feedback.tracking_error()
        last = self.teleop.last
        lag, _lag_angle = self.feedback.command_error(last.position, last.orientation)
        return rtt, tracking, tracking_angle, lag

    def _prediction_state(self):
        if self.predictor is None:
            return 'off'
        return self.predictor.state(self._console_time())

    def _prediction_values(self):
        """Return the predictor's /diagnostics values (CPU share since the last report)."""
        now_ns = self.get_clock().now().nanoseconds
        since, self._cost_window_ns = self._cost_window_ns, now_ns
        cost, self._prediction_cost = self._prediction_cost, 0.0
        values = {'prediction_state': self._prediction_state(),
                  'scale_policy': self.config.scale_policy,
                  'scale_target': self.scaling.target(self._rtt_p50),
                  'scale_min': self.scaling.scale_min}
        if self.predictor is None:
            return values
        predictor = self.predictor
        bias, bias_angle = predictor.bias()
        prediction = self.prediction
        error = math.nan
        if prediction is not None and self.feedback.measured is not None:
            error = float(np.linalg.norm(prediction.position - self.feedback.measured[0]))
        values.update({
            'prediction_cpu_percent': math.nan if since is None or now_ns <= since else
            100.0 * cost / ((now_ns - since) * 1e-9),
            'prediction_rtt_ms': math.nan if predictor.rtt is None else predictor.rtt * 1e3,
            'prediction_correction_mm': bias * 1e3,
            'prediction_correction_deg': math.degrees(bias_angle),
            'prediction_ahead_of_measured_mm': error * 1e3,
            'prediction_contact': predictor.contact is not None,
            'prediction_contacts': predictor.contacts,
            'prediction_stalls': predictor.stalls,
            'predictions_published': self.predictions_published,
            'prediction_model_steps': predictor.steps,
            'prediction_skipped_steps': predictor.skipped_steps,
        })
        return values

    def _state_name(self):
        return 'no safety/state' if self.safety is None else self.safety.state.name

    def _status(self):
        rtt, tracking, _angle, _lag = self._figures()
        line = status_line(rtt, tracking, self.feedback.force, self._state_name(),
                           self.teleop.clutch, scale=self.teleop.scale,
                           prediction=self._prediction_state())
        if self.tty:
            terminal.write_terminal('\r' + line + '\033[K')
        else:
            now = self.get_clock().now().nanoseconds
            if now - self.last_log_ns >= self.config.status_period * 1e9 * 0.9:
                self.last_log_ns = now
                self.get_logger().info(line)

    def _diagnostics(self):
        rtt, tracking, tracking_angle, lag = self._figures()
        heard = self.rtt.count > 0
        level = 'OK' if heard and self.safety is not None and (
            self.safety.state.allows_motion) else 'WARN'
        message = (self._state_name() + (
            f', RTT p50 {rtt["p50"] * 1000:.1f} ms' if heard else ', no echo from the arm yet'))
        values = {
            'rtt_p50_ms': rtt['p50'] * 1000, 'rtt_p99_ms': rtt['p99'] * 1000,
            'rtt_min_ms': rtt['min'] * 1000, 'rtt_max_ms': rtt['max'] * 1000,
            'rtt_last_ms': rtt['last'] * 1000, 'rtt_count': rtt['count'],
            'rtt_ignored': rtt['ignored'],
            'tracking_error_mm': tracking * 1000,
            'tracking_error_deg': math.degrees(tracking_angle),
            'command_error_mm': lag * 1000,
            'force_n': math.nan if self.feedback.force is None else self.feedback.force,
            'safety_state': self.safety.encode() if self.safety else 'UNKNOWN',
            'clutch': self.teleop.clutch,
            'scale': self.teleop.scale, 'commands_published': self.published,
            'arm_heard': self.arm_heard_ns is not None, 'paused': self.paused,
            'input': self.config.input, 'scheduling': self.schedule.describe(),
            **self._prediction_values(),
        }
        if isinstance(self.source, JoyInput):
            values['joy_messages'] = self.source.messages
            values['joy_live'] = not self.joy_stale
        status = diagnostic_status(f'{self.get_name()}: teleop', self.config.arm, level,
                                   message, values)
        self.diag_pub.publish(diagnostic_array(self, [status]))


def _time_msg(nanoseconds):
    return Time(sec=nanoseconds // 1_000_000_000, nanosec=nanoseconds % 1_000_000_000)


def _finite(position, orientation):
    return all(math.isfinite(v) for v in (*position, *orientation))


def main(args=None):
    sys.exit(run_node(MasterConsole, args))


if __name__ == '__main__':
    main()
