"""
Start node and bench processes for one measurement, and always stop them.

Every process is a :class:`telesurgery_ros.procman.ManagedProcess` (own process group, killed
with us); their output goes to ``<workdir>/processes.log``. The caller has put this process in a
private ROS domain (:func:`telesurgery_ros.domain.isolate`), which the children inherit.
"""
import importlib.util
import json
import os
import sys
import threading
import time

import numpy as np

from telesurgery_ros.bench.stats import cpu_seconds, thread_cpu_seconds
from telesurgery_ros.procman import (
    describe_returncode, ManagedProcess, ros_args, stop_together)


ESTOP_TEXT = '-> ESTOP'                # the watchdog's log line on a latched ESTOP


class BenchError(RuntimeError):
    """A measurement could not be made (a process died, a stream never started)."""


class Unavailable(BenchError):
    """A node the measurement needs does not exist (yet) in this tree."""


def node_available(executable):
    """Tell whether ``telesurgery_ros.nodes.<executable>`` can be imported."""
    try:
        return importlib.util.find_spec(f'telesurgery_ros.nodes.{executable}') is not None
    except ImportError:
        return False


def require_nodes(*executables):
    """Raise :class:`Unavailable` naming the nodes that are missing."""
    missing = [e for e in executables if not node_available(e)]
    if missing:
        raise Unavailable(f'node(s) not available: {", ".join(missing)}')


class Stack:
    """The processes of one measurement; use as a context manager."""

    def __init__(self, workdir, label, echo=False):
        self.workdir = workdir
        self.label = label
        self.echo = echo
        self.procs = []
        self.fail_on_estop = True
        self._lock = threading.Lock()
        os.makedirs(workdir, exist_ok=True)
        self._log = open(os.path.join(workdir, 'processes.log'), 'a')
        self._log.write(f'=== {label} ===\n')

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()
        return False

    def _sink(self, name, line):
        with self._lock:
            self._log.write(f'[{name}] {line}')
        if self.echo:
            sys.stdout.write(f'[{name}] {line}')

    def start(self, name, argv):
        proc = ManagedProcess(name, argv, env=dict(os.environ), sink=self._sink)
        self.procs.append(proc.start())
        return proc

    def node(self, executable, params=None, namespace=None, name=None, remaps=None,
             label=None):
        """Start the node executable ``telesurgery_ros.nodes.<executable>``."""
        require_nodes(executable)
        argv = [sys.executable, '-m', f'telesurgery_ros.nodes.{executable}',
                *ros_args(params, remaps=remaps, name=name, namespace=namespace)]
        return self.start(label or _label(executable, namespace), argv)

    def source(self, topic, rate, namespace=None, label='source', **params):
        """Start a stamped pose source process (see :mod:`telesurgery_ros.bench.echo`)."""
        argv = [sys.executable, '-m', 'telesurgery_ros.bench.echo', 'source',
                *ros_args({'topic': topic, 'rate': float(rate), **params}, namespace=namespace)]
        return self.start(label, argv)

    def sink(self, topics, label='sink', namespace=None, diagnostics=False, safety=False,
             status_topics=()):
        """Start a recording sink; return ``(process, output_prefix)``."""
        prefix = os.path.join(self.workdir, f'{self.label}-{label}'.replace('/', '_'))
        params = {'topics': list(topics), 'output': prefix, 'diagnostics': diagnostics,
                  'safety': safety}
        if status_topics:
            params['status_topics'] = list(status_topics)
        argv = [sys.executable, '-m', 'telesurgery_ros.bench.echo', 'sink',
                *ros_args(params, namespace=namespace,
                          name=label.replace('-', '_').replace('/', '_'))]
        return self.start(label, argv), prefix

    def recorder(self, label='recorder'):
        """Start an MCAP recorder of the demo's topics (a recording tool next to the stack)."""
        output = os.path.join(self.workdir, f'{self.label}-{label}.mcap'.replace('/', '_'))
        argv = [sys.executable, '-m', 'telesurgery_ros.bench.echo', 'record',
                *ros_args({'output': output})]
        return self.start(label, argv)

    def check_alive(self):
        """Raise :class:`BenchError` if any process has exited."""
        for proc in self.procs:
            if not proc.running():
                tail = ''.join(proc.lines[-8:])
                raise BenchError(f'{proc.name} exited ({describe_returncode(proc.returncode)})'
                                 f'; last output:\n{tail}')

    def check_no_estop(self):
        """Raise :class:`BenchError` if a watchdog latched ESTOP (nothing will move again)."""
        if not self.fail_on_estop:
            return
        for proc in self.procs:
            for line in list(proc.lines):
                if ESTOP_TEXT in line:
                    raise BenchError(f'{proc.name}: {line.strip()}')

    def wait_output(self, proc, text, timeout, required=True):
        """Wait until ``proc`` printed a line containing ``text``; return whether it did."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(proc.lines)):
            self.check_alive()
            self.check_no_estop()
            if time.monotonic() > deadline:
                if not required:
                    return False
                raise BenchError(f'{proc.name}: no {text!r} within {timeout:g} s')
            time.sleep(0.05)
        return True

    def wait_receiving(self, sink_proc, topics, timeout=60.0):
        """Wait until the sink has received a first message on every topic."""
        for topic in topics:
            self.wait_output(sink_proc, f'first message on {topic}',
                             max(1.0, timeout))

    def hold(self, seconds):
        """Let the processes run for ``seconds`` (checking they stay alive)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self.check_alive()
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))

    def cpu_snapshot(self, names=None):
        """CPU seconds used so far per process name."""
        return {p.name: cpu_seconds(p.pid) for p in self.procs
                if names is None or p.name in names}

    def thread_snapshot(self, names=None):
        """CPU seconds used so far per process name and thread group."""
        return {p.name: thread_cpu_seconds(p.pid) for p in self.procs
                if names is None or p.name in names}

    def stop_all(self):
        """Stop every process (SIGINT first, so sinks write their files); return exit codes."""
        procs = list(reversed(self.procs))
        # 10 s each to end on the first SIGINT: a second would cut a sink's writing.
        codes = dict(zip((p.name for p in procs), stop_together(procs, sigint_timeout=10.0)))
        self.procs = []
        self._log.flush()
        return codes


def _label(executable, namespace):
    return f'{namespace.strip("/")}/{executable}' if namespace else executable


class Recording:
    """What a sink wrote: per topic, receive times and stamps (s) and positions (m)."""

    def __init__(self, prefix):
        if not os.path.exists(prefix + '.npz'):
            raise BenchError(f'the sink wrote no results ({prefix}.npz missing)')
        with open(prefix + '.json') as handle:
            meta = json.load(handle)
        data = np.load(prefix + '.npz')
        self.topics = meta['topics']
        self.statuses = meta['statuses']
        self.safety = meta['safety']
        self._data = {}
        for i, topic in enumerate(self.topics):
            self._data[topic] = (data[f'recv_ns{i}'], data[f'stamp_ns{i}'], data[f'pos{i}'])

    def stream(self, topic, window=None):
        """
        ``(recv_s, stamp_s, positions)`` of one topic, optionally within a recv window.

        Times are float seconds since the epoch (about 0.2 us resolution); use
        :meth:`latency` for differences at full nanosecond precision.
        """
        recv, stamp, pos = self._data[topic]
        keep = _in_window(recv, window)
        return recv[keep] * 1e-9, stamp[keep] * 1e-9, pos[keep]

    def latency(self, topic, window=None):
        """Receive time minus header stamp of every message in the window, in seconds."""
        recv, stamp, _pos = self._data[topic]
        keep = _in_window(recv, window)
        return (recv[keep] - stamp[keep]) * 1e-9

    def count(self, topic, window=None):
        recv = self._data[topic][0]
        return int(np.count_nonzero(_in_window(recv, window)))


def _in_window(recv_ns, window):
    if window is None:
        return np.ones(recv_ns.shape, dtype=bool)
    start, end = window
    return (recv_ns >= int(start * 1e9)) & (recv_ns <= int(end * 1e9))


class Window:
    """A measurement window on the system clock (the clock the sinks stamp with)."""

    def __init__(self):
        self.start = None
        self.end = None

    def begin(self):
        self.start = time.time()

    def finish(self):
        self.end = time.time()

    @property
    def span(self):
        return (self.start, self.end)

    @property
    def seconds(self):
        return self.end - self.start
