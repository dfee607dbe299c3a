r"""
What the viewer costs the arm: the slave's physics rate and overruns, viewer closed vs open.

One run, one stack (``teleop_launch.yaml``, headless, a private ROS domain), in phases of
``--seconds`` each: viewer closed, viewer open, viewer frozen (SIGSTOP for ``--freeze`` s,
then SIGCONT), viewer open again, viewer closed again. The figures come from the slave's own
``/diagnostics`` (``slave_controller: control loop``: ``physics_rate_hz`` /
``nominal_rate_hz``, the cumulative ``overruns``, ``period_p99_ms``) and the viewer's
(``arm_viewer: render``: ``fps``); safety transitions are counted per phase::

    .venv/bin/python -m telesurgery_ros.tools.viewer_impact --seconds 20

Without a display it starts a private Xvfb for the viewer. Exit code 0 when the stack stayed
up (no ESTOP), 1 otherwise; the table is printed either way, and ``--json FILE`` keeps it.
"""
import argparse
import json
import os
import signal
import sys
import threading
import time

from telesurgery_ros import resources, xdisplay
from telesurgery_ros.core.contract import SafetyStatus
from telesurgery_ros.core.viewer import LoopFigures
from telesurgery_ros.procman import ManagedProcess, ros_args


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument('--seconds', type=float, default=20.0,
                        help='length of each phase (default 20 s)')
    parser.add_argument('--freeze', type=float, default=1.5,
                        help='how long the viewer is stopped with SIGSTOP (default 1.5 s; '
                             '0 skips the frozen phase)')
    parser.add_argument('--profile', default='rome_beijing_2024', help='network profile')
    parser.add_argument('--viewer-args', default='', metavar='ARGS',
                        help="extra arm_viewer parameters, e.g. 'priority:=normal fps:=60'")
    parser.add_argument('--ready-timeout', type=float, default=90.0)
    parser.add_argument('--json', metavar='FILE', help='also write the figures as JSON')
    return parser


class Watch:
    """A node that sorts /diagnostics and safety/state into the current phase."""

    def __init__(self):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from diagnostic_msgs.msg import DiagnosticArray
        from std_msgs.msg import String
        from telesurgery_ros.rosutil import DIAGNOSTICS_QOS, SAFETY_QOS
        from rclpy.signals import SignalHandlerOptions
        # Without rclpy's handlers, which would swallow SIGTERM (the tool would carry on).
        rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
        self.node = rclpy.create_node('viewer_impact')
        self.lock = threading.Lock()
        self.phase = None
        self.figures = {}
        self.transitions = {}
        self.state = None
        self.node.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                      DIAGNOSTICS_QOS)
        self.node.create_subscription(String, 'safety/state', self._on_state, SAFETY_QOS)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def begin(self, phase):
        with self.lock:
            self.phase = phase
            self.figures[phase] = LoopFigures()
            self.transitions[phase] = []

    def end(self):
        with self.lock:
            self.phase = None

    def _on_diagnostics(self, msg):
        with self.lock:
            if self.phase is None:
                return
            for status in msg.status:
                self.figures[self.phase].on_status(
                    status.name, {kv.key: kv.value for kv in status.values})

    def _on_state(self, msg):
        try:
            status = SafetyStatus.decode(msg.data)
        except ValueError:
            return
        with self.lock:
            if status.state != (self.state.state if self.state else None) and self.phase:
                self.transitions[self.phase].append(status.encode())
            self.state = status

    def close(self):
        import rclpy
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
        rclpy.try_shutdown()


def _row(phase, watch):
    summary = dict(watch.figures[phase].summary(), load_1min=os.getloadavg()[0])
    return phase, summary, list(watch.transitions[phase])


def _fmt(value, spec):
    return '-' if value is None else format(value, spec)


def table(rows):
    lines = [f'{"phase":<16} {"physics % mean":>14} {"min":>7} {"overruns":>9} '
             f'{"p99 ms max":>10} {"viewer fps":>10} {"load":>5}  safety transitions']
    for phase, s, transitions in rows:
        lines.append(f'{phase:<16} {_fmt(s["physics_percent_mean"], ".2f"):>14} '
                     f'{_fmt(s["physics_percent_min"], ".1f"):>7} '
                     f'{_fmt(s["overruns"], ".0f"):>9} {_fmt(s["period_p99_ms_max"], ".2f"):>10} '
                     f'{_fmt(s["viewer_fps_mean"], ".1f"):>10} {s["load_1min"]:>5.2f}  '
                     + (', '.join(transitions) or 'none'))
    return '\n'.join(lines)


def main(argv=None):
    options = build_parser().parse_args(argv)
    from telesurgery_ros.domain import isolate
    isolate(os.environ)
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    display = None
    if xdisplay.check_display():
        display = xdisplay.Xvfb()
        env['DISPLAY'] = display.start()
        print(f'[impact] no usable display: private Xvfb {env["DISPLAY"]}', flush=True)
    problem = xdisplay.check_display(env.get('DISPLAY'))
    if problem:
        print(f'[impact] {problem}', file=sys.stderr)
        return 2
    log = open(os.devnull, 'w')

    def sink(_name, line):
        log.write(line)

    launch = os.path.join(resources.share_directory(), 'launch', 'teleop_launch.yaml')
    stack = ManagedProcess('launch', [sys.executable, '-m', 'telesurgery_ros.launch_runner',
                                      '--embedded', launch, f'profile:={options.profile}'],
                           env=env, sink=sink)
    viewer_argv = [sys.executable, '-m', 'telesurgery_ros.nodes.arm_viewer',
                   *ros_args(dict(a.split(':=', 1) for a in options.viewer_args.split()))]
    watch = Watch()
    viewer = None
    rows = []
    ok = True
    try:
        stack.start()
        watch.begin('starting')
        deadline = time.monotonic() + options.ready_timeout
        while not (watch.state and watch.state.state.allows_motion
                   and watch.figures['starting'].physics):
            if time.monotonic() > deadline or not stack.running():
                print('[impact] the stack did not come up', file=sys.stderr)
                return 1
            time.sleep(0.2)
        phases = [('closed', None), ('open', 'start'), ('frozen', 'freeze'),
                  ('open again', None), ('closed again', 'stop')]
        if options.freeze <= 0:
            phases = [p for p in phases if p[0] not in ('frozen', 'open again')]
        for phase, action in phases:
            if action == 'start':
                viewer = ManagedProcess('arm_viewer', viewer_argv, env=env, sink=sink).start()
                watch.begin('viewer starting')
                deadline = time.monotonic() + options.ready_timeout
                while not watch.figures['viewer starting'].fps:
                    if time.monotonic() > deadline or not viewer.running():
                        print('[impact] the viewer did not report fps', file=sys.stderr)
                        return 1
                    time.sleep(0.2)
            elif action == 'freeze':
                watch.begin(phase)
                print(f'[impact] {phase}: SIGSTOP for {options.freeze:g} s', flush=True)
                viewer.send(signal.SIGSTOP)
                time.sleep(options.freeze)
                viewer.send(signal.SIGCONT)
                time.sleep(max(0.0, options.seconds - options.freeze))
                rows.append(_row(phase, watch))
                continue
            elif action == 'stop':
                viewer.stop()
                viewer = None
            watch.begin(phase)
            print(f'[impact] {phase}: {options.seconds:g} s', flush=True)
            time.sleep(options.seconds)
            rows.append(_row(phase, watch))
        watch.end()
    finally:
        if viewer is not None:
            viewer.stop()
        stack.stop(sigint_timeout=20.0)
        watch.close()
        if display is not None:
            display.stop()
        log.close()
    print(table(rows))
    ok = not any('ESTOP' in t for _p, _s, transitions in rows for t in transitions)
    if options.json:
        with open(options.json, 'w') as handle:
            json.dump([{'phase': p, **s, 'transitions': t} for p, s, t in rows], handle,
                      indent=2)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
