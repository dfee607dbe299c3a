"""
``telesurgery-demo``: run the whole stack, watch it, record it, and say how it went.

It starts ``teleop_launch.yaml`` through ``telesurgery-launch`` (so the real ROS 2 launch is
used when installed) with the scripted surgeon motion, and runs a monitor node in this
process that records every command, feedback and safety topic of both sites to
``runs/<timestamp>/run.mcap`` (raw CDR, as ``ros2 bag`` records) together with
``/diagnostics`` and what replays the arm as a robot (``/robot_description``, ``/tf_static``,
``/tf`` from ``psm1/measured_js``: :class:`telesurgery_ros.recorder.RobotRecording`), prints a
live status line, and at the end a summary and ``report.json`` + PNG plots:

- round-trip time (RTT): the console-side ``setpoint_cp`` echoes the stamp of the master
  command it came from; RTT = receive time - stamp, first echo of each stamp only;
- tracking error: each patient-side ``measured_cp`` against the patient-side ``servo_cp``
  command most recently received before it, counted while the safety state is NOMINAL;
- messages dropped: the ``dropped_*`` counters of ``network/stats``, both directions;
- safety events: the transitions of ``safety/state``;
- prediction: e_pred of the console's ghost (``predicted_cp``) and e_delayed of the delayed
  view, against the arm when each command arrived (:mod:`telesurgery_ros.prediction_analysis`,
  from the recording).

The run is *sound* (exit code 0) when the stack came up (commands and feedback flowing, safety
state NOMINAL or DEGRADED), the arm followed (tracking error RMS within
``--max-tracking-rms``), round trips were measured, no ESTOP occurred, no HOLD occurred after
the stack was up (except with a profile that models outages, e.g. ``degraded``: an outage must
end in HOLD), the slave's physics kept up with real time (``--min-physics`` percent, from its
own ``/diagnostics``) and no node exited before the end. ``--gui`` adds the ``arm_viewer``
window (a private Xvfb when there is no display) and the summary gives its fps. Node output goes
to ``launch.log`` beside the recording.

``--sites 2`` runs the two sites as a real two-site deployment on this machine: the patient
site (``patient_site_launch.yaml link:=zenoh``) in one ROS domain, the surgeon site
(``surgeon_site_launch.yaml link:=zenoh``) in another, joined only by the two ``site_link``
nodes over mutual TLS on loopback, with throw-away certificates made under the run folder.
The monitor then has one participant in each domain, and the summary adds the link's
statistics (``link`` in report.json: each side's ``site_link: link`` status).
"""
import argparse
import datetime
import json
import math
import os
import signal
import sys
import threading
import time

import numpy as np

from telesurgery_ros import prediction_analysis, resources, stdout_guard
from telesurgery_ros.core import contract
from telesurgery_ros.core.contract import SafetyState, SafetyStatus
from telesurgery_ros.core.params import Param
from telesurgery_ros.core.rtt import RttMonitor
from telesurgery_ros.core.viewer import LoopFigures
from telesurgery_ros.procman import describe_returncode, ManagedProcess

POSE = 'geometry_msgs/msg/PoseStamped'
WRENCH = 'geometry_msgs/msg/WrenchStamped'
JOINTS = 'sensor_msgs/msg/JointState'
STRING = 'std_msgs/msg/String'
DIAGNOSTICS = 'diagnostic_msgs/msg/DiagnosticArray'


def recorded_topics(arm=contract.DEFAULT_ARM):
    """
    Return (topic, type, role) of everything the demo records; role: what it analyses.

    The jaw commands (2 x 500 Hz) and the console copy of measured_cf are left out to spare
    the two cores the stack runs on; the rest of both sites is recorded.
    """
    patient = contract.arm_topics(arm)
    console = contract.console_topic
    return [
        (console(patient['servo_cp']), POSE, 'console_command'),
        (patient['servo_cp'], POSE, 'command'),
        (patient['setpoint_cp'], POSE, None),
        (console(patient['setpoint_cp']), POSE, 'echo'),
        (patient['measured_cp'], POSE, 'measured'),
        (console(patient['measured_cp']), POSE, None),
        (contract.predicted_topic(arm), POSE, None),
        (patient['measured_cf'], WRENCH, None),
        (patient['measured_js'], JOINTS, 'joints'),
        (contract.SAFETY_STATE_TOPIC, STRING, 'safety'),
        (contract.NETWORK_STATS_TOPIC, DIAGNOSTICS, 'stats'),
        (contract.DIAGNOSTICS_TOPIC, DIAGNOSTICS, 'diagnostics'),
    ]


class Series:
    """A time series kept for plotting: decimated by 2 whenever it reaches ``limit``."""

    def __init__(self, limit=20000):
        self.limit = limit
        self.stride = 1
        self._skip = 0
        self.t, self.v = [], []

    def append(self, t, value):
        self._skip += 1
        if self._skip < self.stride:
            return
        self._skip = 0
        self.t.append(t)
        self.v.append(value)
        if len(self.t) >= self.limit:
            self.t, self.v = self.t[::2], self.v[::2]
            self.stride *= 2


class RunMetrics:
    """The demo's figures, from messages fed in with their receive time (pure logic)."""

    def __init__(self, start):
        self.start = start
        self.rtt = RttMonitor(window=10_000_000)
        self.rtt_series = Series()
        self.command = None                  # latest patient-side command position
        self.commanded_path = Series()
        self.measured_path = Series()
        self.error_series = Series()
        self.errors = []
        self.state = None
        self.state_series = Series()
        self.transitions = []
        self.dropped = {}
        self.reordered = {}
        self.relay_delay = {}
        self.counts = {}
        self.ready_at = None                 # s after start, once the stack is up
        self.ended = False                   # the run is over: the nodes are being stopped
        self.holds_after_ready = []
        self.loop = LoopFigures()            # slave control loop and viewer, after ready

    def mark_ready(self, now):
        self.ready_at = now - self.start

    def mark_end(self):
        """Mark the run over: what the nodes say while they stop is no longer judged."""
        self.ended = True

    def on_diagnostics(self, statuses):
        """``statuses``: [(name, {key: value text})] of one /diagnostics message."""
        if self.ready_at is None or self.ended:
            return
        for name, values in statuses:
            self.loop.on_status(name, values)

    def count(self, role):
        self.counts[role] = self.counts.get(role, 0) + 1

    def on_echo(self, stamp, now):
        rtt = self.rtt.on_echo(stamp, now)
        if rtt is not None:
            self.rtt_series.append(now - self.start, rtt)

    def on_command(self, position, now):
        self.command = np.asarray(position, float)
        self.commanded_path.append(now - self.start, tuple(self.command))

    def on_measured(self, position, now):
        position = np.asarray(position, float)
        self.measured_path.append(now - self.start, tuple(position))
        if self.command is None or self.state is not SafetyState.NOMINAL:
            return
        error = float(np.linalg.norm(position - self.command))
        self.errors.append(error)
        self.error_series.append(now - self.start, error)

    def on_safety(self, text, now):
        try:
            status = SafetyStatus.decode(text)
        except ValueError:
            return
        if status.state is not self.state:
            self.transitions.append({
                't': round(now - self.start, 3),
                'from': None if self.state is None else self.state.name,
                'to': status.state.name, 'reason': status.reason})
            self.state = status.state
            if status.state is SafetyState.HOLD and self.ready_at is not None and \
                    not self.ended:
                self.holds_after_ready.append(self.transitions[-1])
        self.state_series.append(now - self.start, int(status.state))

    def on_stats(self, statuses):
        """``statuses``: [(name, {key: value text})] of one network/stats message."""
        for name, values in statuses:
            direction = name.rsplit(':', 1)[-1].strip()
            if direction not in ('forward', 'backward'):
                continue
            dropped = 0
            for key, value in values.items():
                if key.startswith('dropped_'):
                    try:
                        dropped += int(float(value))
                    except ValueError:
                        pass
            self.dropped[direction] = dropped
            try:
                self.reordered[direction] = int(float(values.get('reordered', 0)))
            except ValueError:
                pass
            try:
                self.relay_delay[direction] = float(values.get('delay_p50_ms', 'nan'))
            except ValueError:
                pass

    def tracking(self):
        if not self.errors:
            return {'rms_m': math.nan, 'max_m': math.nan, 'samples': 0}
        data = np.asarray(self.errors)
        return {'rms_m': float(np.sqrt(np.mean(data ** 2))), 'max_m': float(data.max()),
                'samples': int(data.size)}

    def summary(self):
        rtt = self.rtt.summary()
        return {
            'rtt_ms': {'p50': rtt['p50'] * 1e3, 'p99': rtt['p99'] * 1e3,
                       'min': rtt['min'] * 1e3, 'max': rtt['max'] * 1e3,
                       'samples': rtt['count']},
            'tracking_error': self.tracking(),
            'messages_dropped': dict(self.dropped, total=sum(self.dropped.values())),
            # network/stats 'reordered' of the forward direction: commands the arm received
            # after a later one (0 on every FIFO profile).
            'commands_out_of_order': self.reordered.get('forward'),
            'relay_delay_p50_ms': self.relay_delay,
            'safety_events': self.transitions,
            'final_state': None if self.state is None else self.state.name,
            'holds_after_ready': len(self.holds_after_ready),
            'control_loop': self.loop.summary(),
            'messages': dict(self.counts),
        }


def verdict(summary, node_failures, ready, max_tracking_rms, allow_hold=False,
            min_physics=99.0):
    """
    Return the list of reasons the run was not sound (empty: sound).

    ``allow_hold``: HOLDs after the stack was up are expected (a profile with outages).
    ``min_physics``: the slave's physics must have kept this percent of real time on average
    (from its own reports after the stack was up; not judged without reports).
    """
    reasons = []
    if not ready:
        reasons.append('the stack never became ready (no commands at the arm, no feedback or '
                       'no safety state)')
    if node_failures:
        reasons.append('node(s) exited before the end: ' + ', '.join(node_failures))
    if any(e['to'] == 'ESTOP' for e in summary['safety_events']):
        reasons.append('ESTOP occurred')
    track = summary['tracking_error']
    if not track['samples']:
        reasons.append('no tracking samples in NOMINAL')
    elif not track['rms_m'] <= max_tracking_rms:
        reasons.append(f"tracking error RMS {track['rms_m'] * 1e3:.2f} mm over "
                       f'{max_tracking_rms * 1e3:.2f} mm')
    if not summary['rtt_ms']['samples']:
        reasons.append('no round trip measured')
    holds = summary.get('holds_after_ready', 0)
    if holds and not allow_hold:
        reasons.append(f'{holds} HOLD(s) after the stack was up')
    loop = summary.get('control_loop') or {}
    physics = loop.get('physics_percent_mean')
    if physics is not None and physics < min_physics:
        reasons.append(f'slave physics {physics:.2f} % of real time (< {min_physics:g} %, '
                       f"min {loop['physics_percent_min']:.1f} %)")
    return reasons


def models_outages(profile):
    """Whether the named network profile (package file) cuts the link now and then."""
    from telesurgery_ros.core.profiles import default_profiles_path, load_profiles, resolve
    try:
        resolved = resolve(load_profiles(default_profiles_path()), profile)
    except ValueError:
        return False        # an unknown profile: the relay reports it
    return any(link.outage_windows or link.outage_mean_on > 0.0
               for link in (resolved.forward, resolved.backward))


def _fmt_ms(value):
    return 'n/a' if not math.isfinite(value) else f'{value:.1f} ms'


def status_line(metrics, elapsed, duration):
    rtt = metrics.rtt.summary()
    track = metrics.tracking()
    total = f'/{duration:.0f}' if duration else ''
    state = metrics.state.name if metrics.state is not None else 'no state'
    return (f't={elapsed:5.1f}{total} s  {state:<8}  rtt p50 {_fmt_ms(rtt["p50"] * 1e3)} '
            f'p99 {_fmt_ms(rtt["p99"] * 1e3)}  err rms '
            + ('n/a' if not track['samples'] else f'{track["rms_m"] * 1e3:.2f} mm')
            + f'  dropped {sum(metrics.dropped.values())}')


def _physics_text(loop):
    if not loop.get('reports'):
        return 'n/a (no control-loop report from the slave)'
    overruns = '' if loop.get('overruns') is None else f", {loop['overruns']:.0f} overruns"
    return (f"{loop['physics_percent_mean']:.2f} % of real time (min "
            f"{loop['physics_percent_min']:.1f} %, {loop['reports']} reports{overruns}; "
            'slave_controller /diagnostics)')


def _fps_text(loop):
    if loop.get('viewer_fps_mean') is None:
        return 'no fps report from arm_viewer'
    return (f"{loop['viewer_fps_mean']:.1f} fps achieved (min {loop['viewer_fps_min']:.1f}; "
            'arm_viewer /diagnostics)')


def summary_text(summary, reasons, out_dir, gui=False):
    rtt, track = summary['rtt_ms'], summary['tracking_error']
    lines = [
        '--- summary ---',
        f"RTT            p50 {_fmt_ms(rtt['p50'])}, p99 {_fmt_ms(rtt['p99'])} "
        f"({rtt['samples']} round trips)",
        'tracking error ' + ('n/a' if not track['samples'] else
                             f"RMS {track['rms_m'] * 1e3:.2f} mm, max "
                             f"{track['max_m'] * 1e3:.2f} mm ({track['samples']} samples, "
                             'NOMINAL only)'),
        *(prediction_analysis.text_lines(summary) if 'prediction' in summary else []),
        'dropped        ' + ', '.join(f'{k} {v}' for k, v in
                                      summary['messages_dropped'].items()),
        'out of order   ' + ('n/a' if summary.get('commands_out_of_order') is None else
                             f"{summary['commands_out_of_order']} commands reached the arm "
                             'after a later one'),
        f"safety events  {len(summary['safety_events'])}: " + (', '.join(
            f"{e['t']:.1f}s {e['to']}" + (f" ({e['reason']})" if e['reason'] else '')
            for e in summary['safety_events'][:8]) or 'none')
        + (' ...' if len(summary['safety_events']) > 8 else ''),
        'arm physics    ' + _physics_text(summary.get('control_loop') or {}),
    ]
    if gui:
        lines.append('viewer         ' + _fps_text(summary.get('control_loop') or {}))
    lines += [
        'verdict        ' + ('sound' if not reasons else 'NOT sound: ' + '; '.join(reasons)),
        f'files          {out_dir}/',
    ]
    return '\n'.join(lines)


# --- plots -------------------------------------------------------------------------------

def write_plots(metrics, out_dir):
    """Write path.png, latency.png and safety.png; return their file names."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    written = []
    cmd = np.asarray(metrics.commanded_path.v).reshape(-1, 3)
    meas = np.asarray(metrics.measured_path.v).reshape(-1, 3)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for data, label, style in ((cmd, 'commanded (servo_cp at the arm)', '-'),
                               (meas, 'measured (measured_cp)', '--')):
        if len(data):
            axes[0].plot(data[:, 0] * 1e3, data[:, 1] * 1e3, style, label=label, lw=1)
    axes[0].set(xlabel='x [mm]', ylabel='y [mm]', title='tool tip in psm1_rcm (top view)')
    axes[0].axis('equal')
    axes[0].legend(loc='best', fontsize=8)
    for data, t, label, style in ((cmd, metrics.commanded_path.t, 'commanded', '-'),
                                  (meas, metrics.measured_path.t, 'measured', '--')):
        if len(data):
            axes[1].plot(t, data[:, 2] * 1e3, style, label=f'z {label}', lw=1)
    axes[1].set(xlabel='time [s]', ylabel='z [mm]', title='depth over time')
    axes[1].ticklabel_format(axis='y', useOffset=False)
    axes[1].legend(loc='best', fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, 'path.png'), dpi=100)
    plt.close(fig)
    written.append('path.png')

    fig, axes = plt.subplots(2, 1, figsize=(11, 6), sharex=True)
    axes[0].plot(metrics.rtt_series.t, np.asarray(metrics.rtt_series.v) * 1e3, '.', ms=2)
    axes[0].set(ylabel='RTT [ms]', title='round-trip time (console clock)')
    axes[1].plot(metrics.error_series.t, np.asarray(metrics.error_series.v) * 1e3, lw=0.8)
    axes[1].set(xlabel='time [s]', ylabel='tracking error [mm]')
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, 'latency.png'), dpi=100)
    plt.close(fig)
    written.append('latency.png')

    fig, ax = plt.subplots(figsize=(11, 3))
    if metrics.state_series.t:
        ax.step(metrics.state_series.t, metrics.state_series.v, where='post')
    ax.set_yticks([int(s) for s in SafetyState], [s.name for s in SafetyState])
    ax.set(xlabel='time [s]', title='safety state', ylim=(-0.5, 3.5))
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, 'safety.png'), dpi=100)
    plt.close(fig)
    written.append('safety.png')
    return written


# --- the monitor node ---------------------------------------------------------------------

MONITOR_PARAMETERS = (
    Param('tf_rate', 0.0, '/tf in the recording: at most this often (joint-state time); 0 = '
          'every psm1/measured_js, i.e. the feedback rate', 'Hz', 0.0, 1000.0),
)


def make_monitor(arm, recorder, metrics, lock, tf_rate=0.0, context=None, topics=None,
                 name='demo_monitor'):
    """
    Make the node that records every topic raw and feeds ``metrics`` what it needs.

    ``topics`` (default: every recorded topic) selects some, for a monitor in one of two
    domains; ``context`` is that domain's rclpy Context. The monitor that takes
    ``measured_js`` also writes the robot (``/robot_description``, ``/tf_static``, ``/tf``).
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped, WrenchStamped
    from rclpy.node import Node
    from rclpy.parameter import Parameter
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    from telesurgery_ros.core.sim import arm_urdf, BASE_POSITION
    from telesurgery_ros.recorder import qos_yaml_of, RobotRecording
    from telesurgery_ros.rosutil import declare_parameters, DIAGNOSTICS_QOS, SAFETY_QOS, \
        STREAM_QOS

    classes = {POSE: PoseStamped, WRENCH: WrenchStamped, JOINTS: JointState, STRING: String,
               DIAGNOSTICS: DiagnosticArray}

    class Monitor(Node):
        """Raw subscriptions to every recorded topic."""

        def __init__(self):
            super().__init__(name, context=context, parameter_overrides=[
                Parameter('tf_rate', value=float(tf_rate))])
            config = declare_parameters(self, MONITOR_PARAMETERS, on_change=self._on_change)
            chosen = [(topic, type_name, role) for topic, type_name, role in recorded_topics(arm)
                      if topics is None or topic in topics]
            self.robot = None
            if any(role == 'joints' for _topic, _type, role in chosen):
                with open(arm_urdf()) as handle:
                    self.robot = RobotRecording(recorder, handle.read(), base_pose=(
                        BASE_POSITION, (0.0, 0.0, 0.0, 1.0)), tf_rate=config.tf_rate)
                self.robot.start(time.time_ns())
            self.subs = []
            for topic, type_name, role in chosen:
                qos = {'safety': SAFETY_QOS, 'stats': DIAGNOSTICS_QOS,
                       'diagnostics': DIAGNOSTICS_QOS}.get(role, STREAM_QOS)
                recorder.declare(_absolute(topic), type_name, qos_yaml_of(qos))
                self.subs.append(self.create_subscription(
                    classes[type_name], topic, self._callback(topic, type_name, role), qos,
                    raw=True))

        def _on_change(self, config, _names):
            if self.robot is not None:
                self.robot.tf_rate = config.tf_rate

        def _callback(self, topic, type_name, role):
            name = _absolute(topic)
            cls = classes[type_name]

            def on_message(data):
                now_ns = time.time_ns()
                recorder.write(name, type_name, data, now_ns)
                if role is None:
                    return
                now = now_ns * 1e-9
                msg = deserialize_message(data, cls)
                with lock:
                    metrics.count(role)
                    if role == 'echo':
                        stamp = msg.header.stamp
                        metrics.on_echo(stamp.sec + stamp.nanosec * 1e-9, now)
                    elif role in ('command', 'measured'):
                        p = msg.pose.position
                        handler = metrics.on_command if role == 'command' else \
                            metrics.on_measured
                        handler((p.x, p.y, p.z), now)
                    elif role == 'safety':
                        metrics.on_safety(msg.data, now)
                    elif role == 'joints':
                        stamp = msg.header.stamp
                        self.robot.on_joint_state(msg.name, msg.position,
                                                  stamp.sec * 1_000_000_000 + stamp.nanosec,
                                                  now_ns)
                    elif role == 'stats':
                        metrics.on_stats([(s.name, {kv.key: kv.value for kv in s.values})
                                          for s in msg.status])
                    elif role == 'diagnostics':
                        # the slave's loop health and the viewer's fps, for the verdict
                        metrics.on_diagnostics([(s.name, {kv.key: kv.value for kv in s.values})
                                                for s in msg.status])
            return on_message

    return Monitor()


def _absolute(topic):
    return topic if topic.startswith('/') else '/' + topic


# --- main ------------------------------------------------------------------------------------

def build_parser():
    parser = argparse.ArgumentParser(
        prog='telesurgery-demo',
        description='Run the whole telesurgery stack with the scripted surgeon motion, record '
                    'it to MCAP and report RTT, tracking error, drops and safety events.')
    parser.add_argument('--duration', type=float, default=30.0, metavar='S',
                        help='seconds to run once the stack is ready (default 30; 0 = until '
                             'Ctrl-C)')
    parser.add_argument('--profile', default='rome_beijing_2024',
                        help='network profile (config/network_profiles.yaml)')
    parser.add_argument('--seed', type=int, default=0, help='seed of the network impairments')
    parser.add_argument('--gui', action='store_true',
                        help='open the arm_viewer window in the patient view (a private Xvfb '
                             'when there is no display); the summary gives its fps')
    parser.add_argument('--input', default='trajectory', choices=('trajectory', 'replay', 'joy'),
                        help='surgeon input: trajectory (scripted motion, default), replay '
                             "(recorded CSV) or joy (the viewer's keys drive: use with --gui); "
                             'keyboard needs a terminal, run it on its own')
    parser.add_argument('--arm', default=contract.DEFAULT_ARM, help='arm namespace')
    parser.add_argument('--launch-file', default=None, metavar='FILE',
                        help='launch file with the same arguments as teleop_launch.yaml '
                             '(default: the package teleop_launch.yaml)')
    parser.add_argument('--runs-dir', default='runs', metavar='DIR',
                        help='where runs/<timestamp>/ goes (default ./runs)')
    parser.add_argument('--ready-timeout', type=float, default=60.0, metavar='S',
                        help='how long the stack may take to come up (default 60)')
    parser.add_argument('--private-domain', action='store_true',
                        help='run in a free ROS_DOMAIN_ID of its own, localhost only (default: '
                             'that of the environment, so ROS tools can watch the run)')
    parser.add_argument('--tf-rate', type=float, default=0.0, metavar='HZ',
                        help='rate of /tf in the recording (default 0: every psm1/measured_js, '
                             'the feedback rate)')
    parser.add_argument('--max-tracking-rms', type=float, default=0.005, metavar='M',
                        help='tracking error RMS (m) above which the run is not sound '
                             '(default 0.005)')
    parser.add_argument('--min-physics', type=float, default=99.0, metavar='PERCENT',
                        help="the slave's physics must keep this percent of real time on "
                             'average, per its own /diagnostics (default 99)')
    parser.add_argument('--sites', type=int, default=1, choices=(1, 2),
                        help='1: one ROS domain, network_relay between the sites (default); '
                             '2: two ROS domains joined by site_link over mutual TLS on '
                             'loopback, with throw-away certificates under the run folder')
    return parser


def _check_options(options):
    problems = []
    if not (options.duration >= 0 and math.isfinite(options.duration)):
        problems.append(f'--duration must be >= 0 s (0 = until Ctrl-C), got {options.duration}')
    if not options.ready_timeout > 0:
        problems.append(f'--ready-timeout must be > 0 s, got {options.ready_timeout}')
    if not 0 <= options.tf_rate <= 1000:
        problems.append(f'--tf-rate must be 0 to 1000 Hz (0 = the feedback rate), got '
                        f'{options.tf_rate}')
    if not options.max_tracking_rms > 0:
        problems.append(f'--max-tracking-rms must be > 0 m, got {options.max_tracking_rms}')
    if options.sites == 2 and options.launch_file:
        problems.append('--launch-file is for one site; --sites 2 runs the two site launch '
                        'files')
    return problems


class _LogSink:
    """The nodes' output, to launch.log (the last lines kept for errors)."""

    def __init__(self, path):
        self.handle = open(path, 'w')
        self.lock = threading.Lock()
        self.tail = []

    def __call__(self, name, line):
        if name != 'launch':        # two sites: say which one
            line = f'[{name}] {line}'
        with self.lock:
            self.handle.write(line)
            self.handle.flush()
            self.tail = (self.tail + [line])[-40:]

    def close(self):
        with self.lock:
            self.handle.close()


class TwoSites:
    """
    ``--sites 2``: the patient site in this process's domain, the surgeon site in another.

    Makes the throw-away certificates, claims the second domain and a free port, builds the
    two launch commands, and keeps the latest ``site_link: link`` status of each side.
    """

    def __init__(self, out_dir, environ):
        from telesurgery_ros.domain import claim_domain, free_port
        from telesurgery_ros.tools import certs

        self.certs = os.path.join(out_dir, 'certs')
        certs.create(self.certs, days=2)
        self.domain_b = int(environ.get('ROS_DOMAIN_ID') or 0)
        self.domain_a = claim_domain()
        while self.domain_a == self.domain_b:
            self.domain_a = claim_domain()
        self.port = free_port()
        self.endpoint = f'tls/127.0.0.1:{self.port}'
        self.env_a = {**environ, 'ROS_DOMAIN_ID': str(self.domain_a),
                      'ROS_AUTOMATIC_DISCOVERY_RANGE': 'LOCALHOST'}
        self.link = {}                      # side -> {key: value} of its 'site_link: link'
        self.lock = threading.Lock()

    def launches(self, options):
        """Return [(name, launch file, arguments, environment)] of the two sites."""
        share = os.path.join(resources.share_directory(), 'launch')
        common = ['link:=zenoh', f'link_endpoint:={self.endpoint}', f'certs:={self.certs}',
                  f'arm:={options.arm}']
        return [
            ('patient', os.path.join(share, 'patient_site_launch.yaml'),
             common + [f'profile:={options.profile}', f'seed:={options.seed}',
                       f"gui:={'true' if options.gui else 'false'}"], None),
            ('surgeon', os.path.join(share, 'surgeon_site_launch.yaml'),
             common + [f'input:={options.input}'], self.env_a),
        ]

    def on_diagnostics(self, side, msg):
        for status in msg.status:
            if status.name.endswith(': link'):
                with self.lock:
                    self.link[side] = {'message': status.message,
                                       **{kv.key: kv.value for kv in status.values}}

    def summary(self):
        with self.lock:
            return {side: dict(values) for side, values in self.link.items()}


# The last ``site_link: link`` status of each side (sent at stats_rate, so the two sides'
# counters are up to one period apart). sequence_gaps: samples of the other site this link
# never received (lost on the link).
LINK_FIELDS = ('connection', 'peer_identity', 'messages_sent', 'messages_received',
               'sequence_gaps', 'replay_drops', 'refused_peers', 'refused_handshakes',
               'peer_losses')


def link_text(link):
    """Return the summary lines of the two links (``--sites 2``)."""
    lines = []
    for side in ('surgeon', 'patient'):
        values = link.get(side)
        if values is None:
            lines.append(f'link {side:<8}  no status received')
            continue
        lines.append(f'link {side:<8}  ' + ', '.join(
            f"{key.replace('_', ' ')} {values.get(key, '?')}" for key in LINK_FIELDS))
    return '\n'.join(lines)


def main(argv=None):
    options = build_parser().parse_args(argv)
    stdout_guard.guard()
    problems = _check_options(options)
    if problems:
        for problem in problems:
            print(f'telesurgery-demo: {problem}', file=sys.stderr)
        return 2
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime('%Y%m%d-%H%M%S')
    out_dir = os.path.abspath(os.path.join(options.runs_dir, stamp))
    os.makedirs(out_dir, exist_ok=True)

    if options.private_domain:
        from telesurgery_ros.domain import isolate
        print(f'[demo] private ROS_DOMAIN_ID={isolate(os.environ)}', flush=True)
    display = _viewer_display(options)
    if display is False:
        return 2

    import rclpy
    from rclpy.executors import ExternalShutdownException, ShutdownException
    from rclpy.experimental import EventsExecutor
    from rclpy.signals import SignalHandlerOptions

    from telesurgery_ros.recorder import McapRecorder

    stop = threading.Event()
    signals = []

    def on_signal(signum, _frame):
        signals.append(signum)
        stop.set()

    # The monitor is UDP-only like the nodes (telesurgery_ros/transport.py says why).
    from telesurgery_ros import transport
    transport.configure()
    # Our own handlers: rclpy's would shut the context down before the recording is closed.
    rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    recorder = McapRecorder(os.path.join(out_dir, 'run.mcap'))
    lock = threading.Lock()
    metrics = RunMetrics(time.time())
    sites = TwoSites(out_dir, os.environ) if options.sites == 2 else None
    spinning = threading.Event()
    spinning.set()
    spinners, monitors, contexts = [], [], []

    def spin(executor, context):
        # spin_once in a loop: EventsExecutor.spin() does not return on shutdown (rclpy 9.1.2)
        try:
            while spinning.is_set() and rclpy.ok(context=context):
                executor.spin_once(timeout_sec=0.1)
        except (ExternalShutdownException, ShutdownException):
            pass

    def add_monitor(monitor, context=None):
        executor = EventsExecutor(context=context)
        executor.add_node(monitor)
        monitors.append(monitor)
        spinners.append(threading.Thread(target=spin, args=(executor, context), daemon=True))
        spinners[-1].start()

    if sites is None:
        add_monitor(make_monitor(options.arm, recorder, metrics, lock, options.tf_rate))
    else:
        # One participant in each domain: the console's topics live in A, the rest in B
        # (A's safety/state and network/stats are the link's copies of B's).
        from diagnostic_msgs.msg import DiagnosticArray

        from telesurgery_ros.rosutil import DIAGNOSTICS_QOS
        console = {t for t, _type, _role in recorded_topics(options.arm)
                   if t.startswith(contract.CONSOLE_PREFIX + '/')}
        patient = {t for t, _type, _role in recorded_topics(options.arm)} - console
        context_a = rclpy.Context()
        rclpy.init(args=[], context=context_a, domain_id=sites.domain_a,
                   signal_handler_options=SignalHandlerOptions.NO)
        contexts.append(context_a)
        for side, context, topics in (('patient', None, patient),
                                      ('surgeon', context_a, console)):
            monitor = make_monitor(options.arm, recorder, metrics, lock, options.tf_rate,
                                   context=context,
                                   topics=topics, name=f'demo_monitor_{side}')
            monitor.create_subscription(
                DiagnosticArray, contract.DIAGNOSTICS_TOPIC,
                lambda msg, side=side: sites.on_diagnostics(side, msg), DIAGNOSTICS_QOS)
            add_monitor(monitor, context)

    sink = _LogSink(os.path.join(out_dir, 'launch.log'))
    if sites is None:
        launch_file = options.launch_file or os.path.join(resources.share_directory(),
                                                          'launch', 'teleop_launch.yaml')
        launch_args = [f'profile:={options.profile}', f'seed:={options.seed}',
                       f"gui:={'true' if options.gui else 'false'}", f'input:={options.input}',
                       f'arm:={options.arm}']
        launches = [('launch', launch_file, launch_args, None)]
    else:
        launches = sites.launches(options)
    display_env = {} if display is None else {'DISPLAY': display.display}
    runners = [ManagedProcess(name, [sys.executable, '-m', 'telesurgery_ros.launch_runner',
                                     path, *arguments],
                              env={**(env or os.environ), 'PYTHONUNBUFFERED': '1',
                                   **display_env}, sink=sink)
               for name, path, arguments, env in launches]
    print(f'[demo] {options.profile}, input {options.input}, seed {options.seed}, '
          f"{'GUI' if options.gui else 'headless'}; recording to {out_dir}/", flush=True)
    if sites is not None:
        print(f'[demo] two sites: surgeon in ROS_DOMAIN_ID={sites.domain_a}, patient in '
              f'ROS_DOMAIN_ID={sites.domain_b}, site_link over {sites.endpoint} (mutual TLS, '
              f'certificates in {sites.certs})', flush=True)
    for runner in runners:
        runner.start()
    tty = sys.stdout.isatty()
    ready = False
    node_failures = []
    started = time.monotonic()
    run_start = None
    last_print = 0.0
    seen = [0] * len(runners)
    try:
        while not stop.is_set():
            failed = [r for r in runners if not r.running()]
            if failed:
                node_failures.extend(
                    f'the launch itself ({describe_returncode(r.returncode)})'
                    if len(runners) == 1 else
                    f'the {r.name} launch ({describe_returncode(r.returncode)})'
                    for r in failed)
                break
            exited = []
            for i, runner in enumerate(runners):
                new_lines, seen[i] = runner.lines[seen[i]:], len(runner.lines)
                exited += [line.split(']')[0].lstrip('[') for line in new_lines
                           if '] exited: ' in line and 'on its own' in line]
            if exited:
                node_failures.extend(exited)
                break
            now = time.monotonic()
            with lock:
                ready_now = (metrics.counts.get('measured', 0) > 10
                             and metrics.counts.get('command', 0) > 10
                             and metrics.state is not None and metrics.state.allows_motion)
                if not ready and ready_now:
                    metrics.mark_ready(time.time())
            if not ready and ready_now:
                ready = True
                run_start = now
                print(f'[demo] stack ready after {now - started:.1f} s', flush=True)
            if not ready and now - started > options.ready_timeout:
                print(f'[demo] the stack did not come up within {options.ready_timeout:.0f} s',
                      flush=True)
                break
            if ready:
                elapsed = now - run_start
                if options.duration and elapsed >= options.duration:
                    break
                if now - last_print >= (0.5 if tty else 5.0):
                    last_print = now
                    with lock:
                        line = status_line(metrics, elapsed, options.duration)
                    print(('\r' + line + '  ') if tty else f'[demo] {line}', end='' if tty
                          else '\n', flush=True)
            if stdout_guard.CLOSED.is_set():
                break
            stop.wait(0.1)
        with lock:
            metrics.mark_end()
        if tty and ready:
            print()
        if signals:
            print(f'[demo] {signal.Signals(signals[0]).name}: stopping', flush=True)
    finally:
        link_at_end = sites.summary() if sites is not None else None   # before the stop
        for runner in runners:
            runner.stop(sigint_timeout=20.0, sigterm_timeout=5.0)
        exits = [line.rstrip() for runner in runners for line in runner.lines
                 if '] exited: ' in line]
        spinning.clear()
        for spinner in spinners:
            spinner.join(timeout=5.0)
        for monitor in monitors:
            monitor.destroy_node()
        for context in contexts:
            rclpy.try_shutdown(context=context)
        rclpy.try_shutdown()
        recorder.close()
        sink.close()
        if display is not None:
            display.stop()
    for line in exits:
        print(f'[demo] {line}')
    if node_failures:
        print('[demo] last lines of launch.log:\n' + ''.join(sink.tail[-15:]), end='')

    with lock:
        summary = metrics.summary()
    holds_expected = models_outages(options.profile)
    predicted, predicted_plots = prediction_analysis.demo_figures(
        os.path.join(out_dir, 'run.mcap'), options.arm, out_dir)
    summary.update(predicted)
    reasons = verdict(summary, node_failures, ready, options.max_tracking_rms,
                      allow_hold=holds_expected, min_physics=options.min_physics)
    plots = write_plots(metrics, out_dir) + predicted_plots
    report = {
        'profile': options.profile, 'seed': options.seed, 'input': options.input,
        'gui': options.gui, 'holds_expected': holds_expected,
        'arm': options.arm, 'duration_s': round(time.monotonic() - run_start, 2)
        if run_start is not None else 0.0,
        'started_utc': stamp, 'sound': not reasons, 'problems': reasons,
        **summary,
        'recorded_messages': dict(recorder.counts),
        'robot_recording': next(m.robot.summary() for m in monitors if m.robot is not None),
        'node_exits': exits,
        'files': {'mcap': 'run.mcap', 'log': 'launch.log', 'plots': plots},
    }
    if sites is not None:
        report['sites'] = {'surgeon_domain': sites.domain_a, 'patient_domain': sites.domain_b,
                           'endpoint': sites.endpoint, 'certs': sites.certs}
        report['link'] = link_at_end
    with open(os.path.join(out_dir, 'report.json'), 'w') as handle:
        json.dump(_finite(report), handle, indent=2)
    print(summary_text(summary, reasons, out_dir, gui=options.gui), flush=True)
    if sites is not None:
        print(link_text(report['link']), flush=True)
    if stdout_guard.CLOSED.is_set():
        stdout_guard.say_closed('telesurgery-demo', f'stopped the stack; the run, its summary '
                                f'included, is in {out_dir}/ (report.json)')
        return stdout_guard.EXIT_CODE
    return 0 if not reasons else 1


def _viewer_display(options):
    """
    Make sure the viewer has a display: None (use $DISPLAY, or no GUI), a started Xvfb, or False.

    Without a usable display a private Xvfb is started (and said so); False (after one line)
    when that is impossible too.
    """
    if options.input == 'joy' and not options.gui:
        print("[demo] input joy without --gui: the console waits for console/joy (a joy_node's "
              'or a viewer started elsewhere)', flush=True)
    if not options.gui:
        return None
    from telesurgery_ros import xdisplay
    problem = xdisplay.check_display()
    if problem is None:
        return None
    server = xdisplay.Xvfb()
    try:
        server.start()
    except RuntimeError as exc:
        print(f'telesurgery-demo: --gui: {problem}; and no private display either: {exc}',
              file=sys.stderr)
        return False
    print(f'[demo] {problem.split(":")[0]}: the viewer runs on a private Xvfb '
          f'{server.display} ({xdisplay.SCREEN[0]}x{xdisplay.SCREEN[1]})', flush=True)
    return server


def _finite(value):
    """NaN/inf -> None, recursively, so report.json is strict JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


if __name__ == '__main__':
    sys.exit(main())
