"""
The test side of a launch test: a spinning probe node, waiting, and the processes of a launch.

:class:`Probe` is an rclpy node that records what it receives and calls services; it spins in
a background thread of its own, in the rclpy context it is given (a :class:`~.stack.Stack`
gives it one bound to the stack's private ROS domain), so a test simply waits on conditions
with :func:`wait_for`. :func:`pids` and :func:`exits` read the node processes of a launch
from its output, in the embedded runner's form (``[launch] <name> started (pid N)``) and in
ROS 2 launch's (``[INFO] [<name>-N]: process started with pid [N]``).
"""
import re
import threading
import time

from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from telesurgery_ros.rosutil import RECORD_QOS

_STARTED = (
    re.compile(r'\[launch\] (\S+) started \(pid (\d+)\)'),
    re.compile(r'\[INFO\] \[(\S+?)-\d+\]: process started with pid \[(\d+)\]'),
)
_EXITED = (
    re.compile(r'^\[(\S+)\] exited: (.+?)(?: \(.*\))?$', re.M),
    re.compile(r'\[(?:INFO|ERROR)\] \[(\S+?)-\d+\]: (process has finished cleanly|'
               r'process has died) \[pid \d+(?:, exit code (-?\d+))?'),
)


def pids(proc):
    """Map node name -> pid from a launch's output (``proc.output()``), either launcher."""
    text = proc.output()
    return {m.group(1): int(m.group(2)) for pattern in _STARTED
            for m in pattern.finditer(text)}


def exits(text):
    """
    Map node name -> how it ended, from a launch's output.

    The embedded runner's own words (``'exit code 0'``, ``'killed by SIGKILL'``); ROS 2
    launch's ``process has finished cleanly`` becomes ``'exit code 0'`` and ``process has
    died [..., exit code -9`` becomes ``'exit code -9'``.
    """
    found = {}
    for m in _EXITED[0].finditer(text):
        if m.group(1) != 'launch':
            found[m.group(1)] = m.group(2)
    for m in _EXITED[1].finditer(text):
        found[m.group(1)] = 'exit code 0' if m.group(2).endswith('cleanly') else \
            f'exit code {m.group(3)}'
    return found


def alive(pid):
    """Whether ``pid`` is a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f'/proc/{pid}/stat') as handle:
            return handle.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (FileNotFoundError, ProcessLookupError):
        return False


def wait_for(predicate, timeout, interval=0.01, what='condition'):
    """Wait until ``predicate()`` is truthy; return its value, or fail naming ``what``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out after {timeout} s waiting for {what}')
        time.sleep(interval)


class Probe(Node):
    """
    A node in the test process: records what it receives, publishes on demand.

    It spins in a background thread, so tests can simply wait on conditions. ``context``:
    the rclpy context (default: the global one, which the caller has initialised).
    """

    def __init__(self, name='test_probe', context=None):
        super().__init__(name, context=context)
        self.received = {}
        self._service_clients = {}
        self._lock = threading.Lock()
        self._executor = SingleThreadedExecutor(context=context)
        self._executor.add_node(self)
        self._thread = threading.Thread(target=self._executor.spin, daemon=True)
        self._thread.start()

    def record(self, msg_type, topic, qos=RECORD_QOS, raw=False):
        """
        Subscribe and keep ``(receive_time_monotonic, msg)`` pairs in ``received[topic]``.

        ``qos`` defaults to :data:`~telesurgery_ros.rosutil.RECORD_QOS` (best effort, 1000
        samples deep): a probe is an instrument, and its executor runs in the test process (a
        few hundred µs per message), so a test that counts what arrived must not see samples
        the probe overwrote itself while its thread waited for a core. Pass the topic's own
        QoS where it is reliable or latched (``safety/state``).
        """
        self.received.setdefault(topic, [])

        def callback(msg):
            with self._lock:
                self.received[topic].append((time.monotonic(), msg))

        return self.create_subscription(msg_type, topic, callback, qos, raw=raw)

    def messages(self, topic):
        with self._lock:
            return [m for _t, m in self.received.get(topic, [])]

    def timed(self, topic):
        with self._lock:
            return list(self.received.get(topic, []))

    def latest(self, topic):
        with self._lock:
            items = self.received.get(topic)
            return items[-1][1] if items else None

    def count(self, topic):
        with self._lock:
            return len(self.received.get(topic, ()))

    def clear(self, topic=None):
        with self._lock:
            for key in ([topic] if topic else list(self.received)):
                self.received[key] = []

    def call(self, srv_type, name, request=None, timeout=10.0):
        """Call a service and return the response (fail the test on timeout)."""
        # Clients are kept until close(): destroying one while the executor spins in its
        # thread makes every later spin raise, which starves the subscriptions.
        key = (srv_type, name)
        if key not in self._service_clients:
            self._service_clients[key] = self.create_client(srv_type, name)
        client = self._service_clients[key]
        assert client.wait_for_service(timeout_sec=timeout), f'service {name} not available'
        future = client.call_async(request or srv_type.Request())
        deadline = time.monotonic() + timeout
        while not future.done():
            assert time.monotonic() < deadline, f'service {name} did not answer'
            time.sleep(0.01)
        return future.result()

    def close(self):
        """
        Stop spinning, wait for the spin thread to end, then destroy the node.

        Destroying entities while the thread still spins makes every later spin raise
        ("cannot use Destroyable"), burning the test process's CPU for the rest of the run.
        """
        self._executor.remove_node(self)
        self._executor.shutdown(timeout_sec=5.0)
        self._thread.join(timeout=5.0)
        assert not self._thread.is_alive(), 'the probe executor did not stop'
        self.destroy_node()
