"""
Helpers for tests that run the real nodes: node processes and a probe node.

Read like a launch test: start the processes, wait until they are ready, assert while they
run, then stop them and assert how they exited.

The probe node, ``wait_for``, ``pids`` and ``alive`` are those of the public
:mod:`telesurgery_ros.testing` (re-exported here), so the project's tests exercise what users
write their launch tests with.
"""
import os
import signal
import sys
import time

from telesurgery_ros.procman import (
    describe_returncode, ManagedProcess, ros_args, stop_together)
from telesurgery_ros.testing import alive, pids, Probe, wait_for

BURST_CHUNK = 100               # samples published back to back (publish_burst)
BURST_GAP = 0.003               # s between the chunks

__all__ = ['alive', 'kill', 'Launcher', 'pids', 'Probe', 'publish_burst', 'wait_for']


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
        """Stop every process together; return the pids of any that survived (none)."""
        for proc, code in zip(self.procs, stop_together(self.procs)):
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


def publish_burst(node, topic, count, ready=lambda: True, what='the reader to match'):
    """
    Publish ``count`` PoseStamped on ``topic`` as fast as possible, once a reader has matched.

    The stamps' ``nanosec`` count 0..count-1, so the stamps a reader kept show what it lost.
    ``ready`` is a further condition to wait for. Return the seconds the burst took.

    They go out in chunks of :data:`BURST_CHUNK`, :data:`BURST_GAP` apart: the kernel's
    default UDP receive buffer (212,992 bytes) holds about 166 of these datagrams, and beyond
    that the kernel drops them (``RcvbufErrors`` in ``/proc/net/snmp``) before any DDS history
    sees them, whenever the reader's receive thread waits for a core. A chunk fits; the gap is
    far shorter than the reader's executor needs to take a chunk.
    """
    from geometry_msgs.msg import PoseStamped
    from rclpy.serialization import serialize_message
    from telesurgery_ros.rosutil import STREAM_QOS
    pub = node.create_publisher(PoseStamped, topic, STREAM_QOS)
    wait_for(lambda: pub.get_subscription_count() > 0 and ready(), 60, what=what)
    time.sleep(0.5)            # the reader's side of the discovery completes too
    started = time.perf_counter()
    for i in range(count):
        if i and i % BURST_CHUNK == 0:
            time.sleep(BURST_GAP)
        msg = PoseStamped()
        msg.header.stamp.sec, msg.header.stamp.nanosec = 1, i
        pub.publish(serialize_message(msg))
    return time.perf_counter() - started
