"""
Child processes that never outlive us: used by the launch runner, the benchmarks and tests.

Each child runs in its own session (process group), its output is read line by line and
handed to a sink with the child's name, and :meth:`ManagedProcess.stop` escalates
SIGINT -> SIGTERM -> SIGKILL on the whole group. On Linux the child is also killed by the
kernel if this process dies (PR_SET_PDEATHSIG), so not even a SIGKILL of the parent leaves
nodes running.
"""
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

_PR_SET_PDEATHSIG = 1


def _die_with_parent():
    try:
        libc = ctypes.CDLL('libc.so.6', use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass


def ros_args(params=None, remaps=None, name=None, namespace=None):
    """Build ``--ros-args`` for a node: parameters, remappings, node name and namespace."""
    args = ['--ros-args']
    if name:
        args += ['-r', f'__node:={name}']
    if namespace:
        args += ['-r', f'__ns:=/{namespace.lstrip("/")}']
    for src, dst in (remaps or {}).items():
        args += ['-r', f'{src}:={dst}']
    for key, value in (params or {}).items():
        args += ['-p', f'{key}:={_param_text(value)}']
    return args


def _param_text(value):
    if isinstance(value, bool):
        return 'true' if value else 'false'
    if isinstance(value, (list, tuple)):
        return '[' + ','.join(_param_text(v) for v in value) + ']'
    if isinstance(value, str):
        return f"'{value}'" if value == '' or ',' in value or ':' in value else value
    return repr(value)


def describe_returncode(code):
    """'exit code 0', 'killed by SIGKILL', ... for a Popen returncode."""
    if code is None:
        return 'still running'
    if code < 0:
        try:
            return f'killed by {signal.Signals(-code).name}'
        except ValueError:
            return f'killed by signal {-code}'
    return f'exit code {code}'


def print_sink(name, line):
    """Write ``[name] line`` to stdout (the default sink)."""
    sys.stdout.write(f'[{name}] {line}')
    sys.stdout.flush()


class ManagedProcess:
    """
    One child process with prefixed output and guaranteed teardown.

    Start it from a thread that lives as long as the child should (PR_SET_PDEATHSIG fires
    when the starting thread exits).
    """

    def __init__(self, name, argv, env=None, cwd=None, sink=print_sink):
        self.name = name
        self.argv = list(argv)
        self.env = env
        self.cwd = cwd
        self.sink = sink
        self.popen = None
        self.lines = []
        self.started_at = None
        self.stop_signal = None
        self._reader = None

    def start(self):
        self.popen = subprocess.Popen(
            self.argv, env=self.env, cwd=self.cwd, stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
            preexec_fn=_die_with_parent, bufsize=1, text=True, errors='replace')
        self.started_at = time.monotonic()
        self._reader = threading.Thread(target=self._read, name=f'out-{self.name}',
                                        daemon=True)
        self._reader.start()
        return self

    def _read(self):
        for line in self.popen.stdout:
            self.lines.append(line)
            if self.sink is not None:
                self.sink(self.name, line)
        self.popen.stdout.close()

    @property
    def pid(self):
        return self.popen.pid

    @property
    def returncode(self):
        return None if self.popen is None else self.popen.poll()

    def running(self):
        return self.popen is not None and self.popen.poll() is None

    def output(self):
        return ''.join(self.lines)

    def send(self, sig):
        """Send ``sig`` to the child's whole process group (no error if already gone)."""
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            pass

    def wait(self, timeout=None):
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sigint_timeout=5.0, sigterm_timeout=3.0):
        """
        Stop the child: SIGINT, then SIGTERM, then SIGKILL; return the exit code.

        The group is SIGKILLed at the end in every case, so grandchildren go too.
        """
        if self.popen is None:
            return None
        for sig, timeout in ((signal.SIGINT, sigint_timeout), (signal.SIGTERM, sigterm_timeout)):
            if self.popen.poll() is not None:
                break
            if self.stop_signal != sig:        # stop_together has sent SIGINT already
                self.stop_signal = sig
                self.send(sig)
            self.wait(timeout)
        if self.popen.poll() is None:
            self.stop_signal = signal.SIGKILL
        self.send(signal.SIGKILL)
        code = self.popen.wait()
        if self._reader is not None:
            self._reader.join(timeout=2.0)
        return code


def stop_together(procs, sigint_timeout=5.0, sigterm_timeout=3.0):
    """
    Stop ``procs`` as one group; return their exit codes, in order.

    SIGINT goes to all of them at once, as ``ros2 launch`` does on Ctrl-C: stopped one by one,
    a node that outlives its peers reacts to their loss (a watchdog would latch ESTOP for a
    slave that was only shut down). Then each, in a thread of its own, gets ``sigint_timeout``
    seconds to end before :meth:`ManagedProcess.stop` escalates to SIGTERM and SIGKILL, so
    a process that hangs delays no other's escalation. No process gets a second SIGINT, which
    could cut short what it writes on its way out.
    """
    for proc in procs:
        if proc.running():
            proc.stop_signal = signal.SIGINT
            proc.send(signal.SIGINT)
    codes = [None] * len(procs)

    def stop_one(index, proc):
        codes[index] = proc.stop(sigint_timeout, sigterm_timeout)

    threads = [threading.Thread(target=stop_one, args=item, name=f'stop-{item[1].name}')
               for item in enumerate(procs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return codes
