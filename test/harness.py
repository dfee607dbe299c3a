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

from telesurgery_ros.procman import (
    describe_returncode, ManagedProcess, ros_args, stop_together)
from telesurgery_ros.testing import alive, pids, Probe, wait_for

__all__ = ['alive', 'kill', 'Launcher', 'pids', 'Probe', 'wait_for']


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
