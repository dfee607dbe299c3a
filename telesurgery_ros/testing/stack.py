"""
A launch under test: started on a private ROS domain, watched, prodded, and torn down.

:class:`Stack` starts a launch file through ``telesurgery-launch`` (which hands it to the real
ROS 2 ``launch`` when that is installed, else runs it with the embedded runner), in a ROS
domain of its own (a free ``ROS_DOMAIN_ID`` locked for the stack's life, localhost discovery
only), with a :class:`~.probe.Probe` node in an rclpy context bound to that same domain, so the
test process and the launch see each other and nothing else. It waits until the arm is under
control (safety state NOMINAL or DEGRADED, feedback flowing), then offers:

- probes: :meth:`~Stack.state` / :meth:`~Stack.wait_for_state` (``safety/state``),
  :meth:`~Stack.pose` / :meth:`~Stack.positions` / :meth:`~Stack.motion` (``psm1/measured_cp``),
  :meth:`~Stack.rtt` (the console's round-trip figures on ``/diagnostics``),
  :meth:`~Stack.round_trips` and :meth:`~Stack.tracking_errors` (``watch_commands=True``),
  :meth:`~Stack.network_stats` (``network/stats``);
- faults: :meth:`~Stack.blackout` (``network/blackout``), :meth:`~Stack.set_profile` (the
  relay's ``profile`` parameter), :meth:`~Stack.kill` (a node process);
- teardown: :meth:`~Stack.shutdown` (Ctrl-C, as a user would; every node must be gone) and
  :meth:`~Stack.close` (also frees the domain). Nothing outlives the stack: node processes die
  with the runner (PR_SET_PDEATHSIG) and :meth:`close` fails loudly if one survived.
"""
import math
import os
import signal
import sys
import time

import numpy as np

from telesurgery_ros import transport
from telesurgery_ros.core import contract
from telesurgery_ros.core.contract import SafetyState, SafetyStatus
from telesurgery_ros.domain import claim_domain, isolated_environment, release_domain
from telesurgery_ros.procman import describe_returncode, ManagedProcess
from telesurgery_ros.testing.probe import alive, exits, pids, Probe, wait_for

NODES = ('master_console', 'network_relay', 'slave_controller', 'safety_watchdog')
CONSOLE_STATUS = 'master_console: teleop'      # the console's /diagnostics status name


class StackError(AssertionError):
    """The launch did not come up, misbehaved, or left something behind (fails the test)."""


class Stack:
    """
    One launch file running under test; see the module docstring.

    ``launch_file``: a path, or a file name in this package's ``launch/``. ``arguments``: the
    launch arguments (``{'profile': 'lan'}``). ``embedded``: True forces the embedded runner,
    False requires ROS 2 launch, None (default) lets ``telesurgery-launch`` choose.
    ``ready_timeout``: seconds the stack may take to come up (0: do not wait).
    ``watch_commands``: also record the patient-side commands and the console-side echoes
    (500 + 200 Hz of Python callbacks; needed by :meth:`round_trips` and
    :meth:`tracking_errors`). ``echo``: copy the launch's output to stdout.
    """

    def __init__(self, launch_file='teleop_launch.yaml', arguments=None, embedded=None,
                 ready_timeout=60.0, watch_commands=False, arm=None, echo=True):
        self.arguments = {k: str(v).lower() if isinstance(v, bool) else str(v)
                          for k, v in (arguments or {}).items()}
        self.arm = arm or self.arguments.get('arm', contract.DEFAULT_ARM)
        topics = contract.arm_topics(self.arm)
        self.topics = {
            'state': contract.SAFETY_STATE_TOPIC,
            'measured': topics['measured_cp'],
            'command': topics['servo_cp'],
            'echo': contract.console_topic(topics['setpoint_cp']),
            'stats': contract.NETWORK_STATS_TOPIC,
            'diagnostics': contract.DIAGNOSTICS_TOPIC,
        }
        self.watch_commands = watch_commands
        self.runner = None
        self.probe = None
        self.context = None
        self.ready_after = None
        self.returncode = None
        self._closed = False
        self.domain = claim_domain()
        try:
            self._start_probe()
            self._start_launch(launch_file, embedded, echo)
            if ready_timeout:
                self.wait_until_ready(ready_timeout)
        except BaseException:
            self.close(check=False)
            raise

    # --- start ---------------------------------------------------------------------------

    def _start_probe(self):
        import rclpy
        from rclpy.context import Context

        # rcl reads the discovery range from the environment while it initialises.
        saved = os.environ.get('ROS_AUTOMATIC_DISCOVERY_RANGE')
        os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
        transport.configure(os.environ)       # UDP only, like the nodes
        try:
            self.context = Context()
            rclpy.init(context=self.context, domain_id=self.domain)
        finally:
            if saved is None:
                os.environ.pop('ROS_AUTOMATIC_DISCOVERY_RANGE')
            else:
                os.environ['ROS_AUTOMATIC_DISCOVERY_RANGE'] = saved
        from diagnostic_msgs.msg import DiagnosticArray
        from geometry_msgs.msg import PoseStamped
        from std_msgs.msg import String

        from telesurgery_ros.rosutil import DIAGNOSTICS_QOS, RECORD_QOS, SAFETY_QOS
        self.probe = Probe('telesurgery_test_probe', context=self.context)
        self.probe.record(String, self.topics['state'], SAFETY_QOS)
        self.probe.record(PoseStamped, self.topics['measured'], RECORD_QOS)
        self.probe.record(DiagnosticArray, self.topics['stats'], DIAGNOSTICS_QOS)
        self.probe.record(DiagnosticArray, self.topics['diagnostics'], DIAGNOSTICS_QOS)
        if self.watch_commands:
            self.probe.record(PoseStamped, self.topics['command'], RECORD_QOS)
            self.probe.record(PoseStamped, self.topics['echo'], RECORD_QOS)

    def _start_launch(self, launch_file, embedded, echo):
        argv = [sys.executable, '-m', 'telesurgery_ros.launch_runner']
        if embedded:
            argv.append('--embedded')
        argv += [launch_file, *[f'{k}:={v}' for k, v in self.arguments.items()]]
        self.runner = ManagedProcess('launch', argv, env=isolated_environment(self.domain),
                                     sink=_echo if echo else None).start()
        wait_for(lambda: 'ROS 2 launch found' in self.output() or 'embedded runner' in
                 self.output() or not self.runner.running(), 30, 0.05,
                 'telesurgery-launch to start')
        if embedded is False and 'ROS 2 launch found' not in self.output():
            raise StackError('ROS 2 launch is not installed (embedded=False asks for it):\n'
                             + self.output()[-2000:])

    def wait_until_ready(self, timeout=60.0):
        """Wait until the safety state allows motion and feedback flows; return seconds."""
        started = time.monotonic()
        try:
            wait_for(lambda: self._ready() or not self.runner.running(), timeout, 0.1,
                     'NOMINAL/DEGRADED with feedback flowing')
        except AssertionError as exc:
            raise StackError(f'{exc}; last safety state: {self._state_text()}\n'
                             + self.output()[-3000:]) from None
        if not self.runner.running():
            raise StackError('the launch ended early ('
                             f'{describe_returncode(self.runner.returncode)}):\n'
                             + self.output()[-3000:])
        self.ready_after = time.monotonic() - started
        return self.ready_after

    def _ready(self):
        state = self.state()     # DEGRADED too: a loaded machine may run the loop late
        return state is not None and state.state.allows_motion and \
            self.probe.count(self.topics['measured']) > 20

    # --- probes --------------------------------------------------------------------------

    def output(self):
        """Everything the launch printed so far."""
        return self.runner.output() if self.runner else ''

    def running(self):
        return self.runner is not None and self.runner.running()

    @property
    def pids(self):
        """{node name: pid} of the launch's node processes (from its output)."""
        return pids(self.runner) if self.runner else {}

    def state(self):
        """Return the latest ``safety/state`` as a :class:`SafetyStatus` (None before any)."""
        msg = self.probe.latest(self.topics['state'])
        return None if msg is None else SafetyStatus.decode(msg.data)

    def _state_text(self):
        msg = self.probe.latest(self.topics['state'])
        return None if msg is None else msg.data

    def wait_for_state(self, state, timeout):
        """Wait until the safety state is ``state`` (SafetyState or name); return seconds."""
        wanted = SafetyState[state] if isinstance(state, str) else SafetyState(state)
        started = time.monotonic()

        def reached():
            status = self.state()
            return status is not None and status.state is wanted
        try:
            wait_for(reached, timeout, 0.02, f'safety state {wanted.name}')
        except AssertionError as exc:
            raise StackError(f'{exc} (last: {self._state_text()})') from None
        return time.monotonic() - started

    def pose(self):
        """Latest ``measured_cp``: (position[3] m, quaternion[4] x, y, z, w) in psm1_rcm."""
        msg = self.probe.latest(self.topics['measured'])
        if msg is None:
            raise StackError(f"no {self.topics['measured']} received")
        p, q = msg.pose.position, msg.pose.orientation
        return np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w])

    def positions(self, since):
        """Return the tool-tip positions received since time.monotonic() ``since`` (N x 3, m)."""
        return np.array([(m.pose.position.x, m.pose.position.y, m.pose.position.z)
                         for t, m in self.probe.timed(self.topics['measured']) if t >= since])

    def motion(self, seconds):
        """Watch the arm for ``seconds``; return how far it got from where it was (m)."""
        start = time.monotonic()
        time.sleep(seconds)
        points = self.positions(start)
        if len(points) < 2:
            raise StackError(f"fewer than 2 {self.topics['measured']} in {seconds} s: no "
                             'feedback from the arm')
        return float(np.max(np.linalg.norm(points - points[0], axis=1)))

    def rtt(self):
        """
        Return the console's own round-trip figures (its latest ``/diagnostics`` status).

        Returns {'p50', 'p99', 'min', 'max', 'last': seconds, 'count': int}, or None before
        the console reported any round trip.
        """
        for msg in reversed(self.probe.messages(self.topics['diagnostics'])):
            for status in msg.status:
                if status.name != CONSOLE_STATUS:
                    continue
                values = {kv.key: kv.value for kv in status.values}
                count = int(values.get('rtt_count', '0'))
                if not count:
                    return None
                figures = {k: float(values[f'rtt_{k}_ms']) * 1e-3
                           for k in ('p50', 'p99', 'min', 'max', 'last')}
                return dict(figures, count=count)
        return None

    def network_stats(self):
        """Latest ``network/stats``: {direction: {key: value text}} (empty before any)."""
        msg = self.probe.latest(self.topics['stats'])
        if msg is None:
            return {}
        return {s.name.rsplit(':', 1)[-1].strip(): {kv.key: kv.value for kv in s.values}
                for s in msg.status}

    def wait_for_rtt(self, condition, timeout):
        """Wait until ``condition(rtt())`` holds for the console's figures; return them."""
        return self._wait_for(self.rtt, condition, timeout, 'the RTT condition')

    def wait_for_stats(self, condition, timeout):
        """Wait until ``condition(network_stats())`` holds; return those statistics."""
        return self._wait_for(self.network_stats, condition, timeout, 'the network/stats '
                              'condition')

    def _wait_for(self, read, condition, timeout, what):
        found = []

        def check():
            value = read()
            if value and condition(value):
                found.append(value)
                return True
            return False
        try:
            wait_for(check, timeout, 0.05, what)
        except AssertionError as exc:
            raise StackError(f'{exc} (last: {read()})') from None
        return found[-1]

    def round_trips(self, since):
        """Console-side RTT (s) of each command stamp echoed since ``since`` (first echo)."""
        self._need_commands('round_trips')
        rtts, last = [], None
        for t_recv, msg in self.probe.timed(self.topics['echo']):
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            if t_recv < since or (last is not None and stamp <= last):
                continue
            last = stamp
            rtts.append(time.time() - (time.monotonic() - t_recv) - stamp)
        return np.array(rtts)

    def tracking_errors(self, since):
        """Each ``measured_cp`` against the ``servo_cp`` received last before it (m)."""
        self._need_commands('tracking_errors')
        commands = [(t, m.pose.position) for t, m in self.probe.timed(self.topics['command'])
                    if t >= since]
        errors = []
        i = -1
        for t, m in self.probe.timed(self.topics['measured']):
            if t < since:
                continue
            while i + 1 < len(commands) and commands[i + 1][0] <= t:
                i += 1
            if i >= 0:
                c, p = commands[i][1], m.pose.position
                errors.append(math.dist((c.x, c.y, c.z), (p.x, p.y, p.z)))
        return np.array(errors)

    def _need_commands(self, what):
        if not self.watch_commands:
            raise StackError(f'{what}() needs the stack started with watch_commands=True')

    # --- faults --------------------------------------------------------------------------

    def blackout(self, on=True):
        """
        Cut (``on``) or restore the relay's link with ``network/blackout`` (std_srvs/SetBool).

        Use it as a context manager to restore the link at the end of the block::

            with stack.blackout():
                stack.wait_for_state('HOLD', 10)
        """
        from std_srvs.srv import SetBool
        response = self.probe.call(SetBool, contract.BLACKOUT_SERVICE, SetBool.Request(data=on))
        if not response.success:
            raise StackError(f'{contract.BLACKOUT_SERVICE} refused: {response.message}')
        return _Restore(self) if on else None

    def set_parameters(self, node, **values):
        """Set parameters of ``node`` (its name) through its parameter service."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter
        request = SetParameters.Request(parameters=[
            Parameter(name, value=value).to_parameter_msg() for name, value in values.items()])
        response = self.probe.call(SetParameters, f'/{node.lstrip("/")}/set_parameters',
                                   request)
        refused = [f'{name}: {result.reason}' for name, result in
                   zip(values, response.results) if not result.successful]
        if refused:
            raise StackError(f'{node} refused ' + '; '.join(refused))

    def set_profile(self, profile, **overrides):
        """Switch the relay to network profile ``profile`` (config/network_profiles.yaml)."""
        self.set_parameters('network_relay', profile=profile, **overrides)

    def kill(self, node, sig=signal.SIGKILL, timeout=10.0):
        """Kill node process ``node`` (a crash, by default) and wait until it is gone."""
        pid = self.pids.get(node)
        if pid is None:
            raise StackError(f'no node process {node!r} (known: {", ".join(sorted(self.pids))})')
        os.kill(pid, sig)
        wait_for(lambda: not alive(pid), timeout, 0.02, f'{node} (pid {pid}) to end')

    def alive(self, node):
        pid = self.pids.get(node)
        return pid is not None and alive(pid)

    # --- teardown ------------------------------------------------------------------------

    def exits(self):
        """How each node ended so far: {name: 'exit code 0' | 'killed by SIGKILL' | ...}."""
        return exits(self.output())

    def shutdown(self, timeout=60.0):
        """
        Ctrl-C the launch (as a user would); return its exit code once every node is gone.

        The embedded runner returns 0 when every node ended cleanly and 1 otherwise; ROS 2
        launch returns 0 even when a node had died, so check :meth:`exits` as well.
        """
        if self.returncode is not None:
            return self.returncode
        self.runner.send(signal.SIGINT)
        code = self.runner.wait(timeout)
        if code is None:
            raise StackError(f'the launch did not stop within {timeout} s of SIGINT')
        self.returncode = code
        left = [name for name, pid in self.pids.items() if alive(pid)]
        if left:
            raise StackError(f'node(s) still running after the launch ended: {left}')
        return code

    def close(self, check=True):
        """Stop everything, free the domain; fail if any process was left behind."""
        if self._closed:
            return
        self._closed = True
        survivors = []
        try:
            if self.runner is not None:
                if self.runner.running() and self.returncode is None:
                    self.runner.stop(sigint_timeout=20.0, sigterm_timeout=5.0)
                self.returncode = self.runner.returncode
                survivors = [(n, p) for n, p in self.pids.items() if alive(p)]
                for _name, pid in survivors:
                    os.kill(pid, signal.SIGKILL)
        finally:
            if self.probe is not None:
                self.probe.close()
            if self.context is not None:
                import rclpy
                rclpy.try_shutdown(context=self.context)
            release_domain(self.domain)
        if check and survivors:
            raise StackError('left behind (killed now): ' + ', '.join(
                f'{name} (pid {pid})' for name, pid in survivors))

    def __enter__(self):
        return self

    def __exit__(self, *_exc):
        self.close()


class _Restore:
    """What :meth:`Stack.blackout` returns: a context manager that restores the link."""

    def __init__(self, stack):
        self.stack = stack

    def __enter__(self):
        return self.stack

    def __exit__(self, *_exc):
        if self.stack.running():
            self.stack.blackout(False)


def _echo(name, line):
    sys.stdout.write(f'[{name}] {line}')


def launch_stack(launch_file='teleop_launch.yaml', **arguments):
    """Start a :class:`Stack` (a context manager too); launch arguments as keywords."""
    options = {k: arguments.pop(k) for k in ('embedded', 'ready_timeout', 'watch_commands',
                                             'arm', 'echo') if k in arguments}
    return Stack(launch_file, arguments, **options)
