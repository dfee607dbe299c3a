"""
Helpers for tests that run the real nodes: node processes and a probe node.

Read like a launch test: start the processes, wait until they are ready, assert while they
run, then stop them and assert how they exited.
"""
import os
import re
import signal
import sys
import threading
import time

from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node

from telesurgery_ros.procman import describe_returncode, ManagedProcess, ros_args


def pids(proc):
    """Map node name -> pid from a launch runner's ``[launch] <name> started (pid N)`` lines."""
    return {m.group(1): int(m.group(2)) for m in
            re.finditer(r'\[launch\] (\S+) started \(pid (\d+)\)', proc.output())}


def alive(pid):
    """Whether ``pid`` is a live process (a zombie awaiting its reaper counts as gone)."""
    try:
        with open(f'/proc/{pid}/stat') as handle:
            return handle.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except (FileNotFoundError, ProcessLookupError):
        return False


class Launcher:
    """Node processes started by one test; :meth:`stop_all` leaves none behind."""

    def __init__(self):
        self.procs = []

    def start(self, executable, params=None, remaps=None, name=None, namespace=None,
              extra_args=(), env=None, echo=True):
        """Start ``telesurgery_ros.nodes.<executable>`` as its own process."""
        argv = [sys.executable, '-m', f'telesurgery_ros.nodes.{executable}', *extra_args,
                *ros_args(params, remaps, name, namespace)]
        proc = ManagedProcess(name or executable, argv, env={**os.environ, **(env or {})},
                              sink=_echo if echo else None)
        self.procs.append(proc.start())
        return proc

    def start_argv(self, name, argv, env=None, echo=True):
        proc = ManagedProcess(name, argv, env={**os.environ, **(env or {})},
                              sink=_echo if echo else None)
        self.procs.append(proc.start())
        return proc

    def stop_all(self):
        """Stop every process; return the pids of any that survived (should be none)."""
        for proc in self.procs:
            code = proc.stop()
            print(f'[{proc.name}] stopped: {describe_returncode(code)}')
        return [p.pid for p in self.procs if _alive(p.pid)]


def _alive(pid):
    try:
        os.killpg(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _echo(name, line):
    sys.stdout.write(f'[{name}] {line}')


def kill(proc, sig=signal.SIGKILL):
    """Kill a node process the hard way (a crash), and wait for it."""
    proc.send(sig)
    proc.wait(10)


class Probe(Node):
    """
    A node in the test process: records what it receives, publishes on demand.

    It spins in a background thread, so tests can simply wait on conditions.
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

    def record(self, msg_type, topic, qos, raw=False):
        """Subscribe and keep ``(receive_time_monotonic, msg)`` pairs in ``received[topic]``."""
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
