"""Child processes are always stopped, even when they ignore SIGINT."""
import signal
import sys
import textwrap

from telesurgery_ros.procman import describe_returncode, ManagedProcess, stop_together

STUBBORN = textwrap.dedent("""
    import signal, subprocess, sys, time
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'])
    print('child', child.pid, flush=True)
    time.sleep(600)
""")


def _alive(pid):
    try:
        with open(f'/proc/{pid}/stat') as stat:
            return stat.read().split()[2] != 'Z'
    except FileNotFoundError:
        return False


def test_output_is_prefixed_and_exit_reported():
    seen = []
    proc = ManagedProcess('hello', [sys.executable, '-c', 'print("hi")'],
                          sink=lambda name, line: seen.append((name, line))).start()
    assert proc.wait(10) == 0
    proc.stop()
    assert seen == [('hello', 'hi\n')]
    assert describe_returncode(proc.returncode) == 'exit code 0'


def test_sigint_ignoring_process_and_its_child_are_killed():
    proc = ManagedProcess('stubborn', [sys.executable, '-c', STUBBORN], sink=None).start()
    deadline_lines = proc.popen  # started
    assert deadline_lines is not None
    import time
    for _ in range(500):
        if proc.lines:
            break
        time.sleep(0.01)
    grandchild = int(proc.lines[0].split()[1])
    code = proc.stop(sigint_timeout=0.5, sigterm_timeout=0.5)
    assert code == -signal.SIGTERM
    assert describe_returncode(code) == 'killed by SIGTERM'
    assert not _alive(proc.pid)
    time.sleep(0.2)
    assert not _alive(grandchild), 'the grandchild survived its process group'


# Ends on SIGINT only after it has seen the other one gone first: a node that reacts to a
# peer's loss. Stopped one by one (the peer first), it would print 'peer lost'.
WATCHER = textwrap.dedent("""
    import os, signal, sys, time
    peer = int(sys.argv[1])
    stop = []
    signal.signal(signal.SIGINT, lambda *_: stop.append(time.monotonic()))
    print('ready', flush=True)
    while not stop:
        try:
            os.kill(peer, 0)
        except ProcessLookupError:
            print('peer lost', flush=True)
            sys.exit(3)
        time.sleep(0.005)
    sys.exit(0)
""")


def test_stop_together_interrupts_every_process_at_once():
    seen = []

    def sink(name, line):
        seen.append((name, line.strip()))
    peer = ManagedProcess('peer', [sys.executable, '-c', 'import time; time.sleep(600)'],
                          sink=sink).start()
    watcher = ManagedProcess('watcher', [sys.executable, '-c', WATCHER, str(peer.pid)],
                             sink=sink).start()
    import time
    deadline = time.monotonic() + 20.0
    while ('watcher', 'ready') not in seen and time.monotonic() < deadline:
        time.sleep(0.01)
    codes = stop_together([peer, watcher])
    print(f'exit codes: peer {describe_returncode(codes[0])}, watcher '
          f'{describe_returncode(codes[1])}')
    assert codes[1] == 0, seen           # the watcher got SIGINT before it saw its peer gone
    assert codes[0] == -signal.SIGINT
    assert not _alive(peer.pid) and not _alive(watcher.pid)
    assert peer.stop_signal == watcher.stop_signal == signal.SIGINT
