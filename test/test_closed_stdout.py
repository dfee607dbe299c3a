"""
The command-line tools when their standard output's reader goes away (``... | head``).

Each tool runs as a real subprocess with its standard output on a pipe that the test closes
after a few lines. The tool must then stop what it started, say so in one line on standard
error (no traceback) and exit with 141, as a shell reports for a writer whose reader ended.
Nothing may be left running. Also here: a node stopped while it is still starting ends as
killed by SIGINT, without a traceback.
"""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time

from harness import alive
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LAUNCH = os.path.join(HERE, 'launch')


@contextlib.contextmanager
def running(argv, env=None):
    """Run ``argv`` with stdout and stderr on pipes; kill its process group if it outlives us."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, **(env or {})},
                            cwd=ROOT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def read_until(proc, predicate, timeout, what):
    """Read stdout lines until ``predicate(lines)``; return the lines."""
    lines = []
    deadline = time.monotonic() + timeout
    while not predicate(lines):
        assert time.monotonic() < deadline, f'no {what} within {timeout:g} s: {lines}'
        line = proc.stdout.readline()
        assert line, f'stdout ended before {what}: {lines}; stderr: {proc.stderr.read()}'
        lines.append(line)
    return lines


def finish(proc, timeout):
    """Wait for the process; return (exit code, stderr)."""
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f'still running {timeout:g} s after its output was closed')
    return code, proc.stderr.read()


def processes_with_env(name, value):
    """Pids of the processes whose environment has ``name=value``."""
    found = []
    needle = f'{name}={value}'.encode()
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            with open(f'/proc/{entry}/environ', 'rb') as handle:
                if needle in handle.read().split(b'\0'):
                    found.append(int(entry))
        except OSError:
            continue
    return found


def test_a_launch_whose_output_is_closed_stops_every_node():
    with running([sys.executable, '-m', 'telesurgery_ros.launch_runner', '--embedded',
                  os.path.join(LAUNCH, 'procs_launch.yaml'), 'mode:=chatty'],
                 env={'PATH': os.path.join(LAUNCH, 'bin') + os.pathsep + os.environ['PATH']}
                 ) as runner:
        lines = read_until(runner, lambda seen: sum('argv: ' in s for s in seen) == 3, 30,
                           'three stand-in nodes started')
        children = [int(s.split('(pid ')[1].split(')')[0]) for s in lines
                    if ' started (pid ' in s]
        assert len(children) == 3, lines
        started = time.monotonic()
        runner.stdout.close()          # as `head` does after its lines
        code, err = finish(runner, 30)
        print(f'the launch stopped {time.monotonic() - started:.2f} s after its output was '
              f'closed; stderr: {err.strip()}')
    assert code == 141, err
    assert 'Traceback' not in err and 'BrokenPipeError' not in err, err
    assert err.strip().splitlines() == [
        'telesurgery-launch: standard output was closed (its reader ended): stopped the launch '
        '(3 node(s))'], err                  # and not "not clean": every node took its SIGINT
    assert not [pid for pid in children if alive(pid)]


@pytest.mark.ros
def test_a_bench_whose_output_is_closed_stops_and_says_what_finished(tmp_path):
    out = tmp_path / 'results'
    with running([sys.executable, '-m', 'telesurgery_ros.bench', 'latency', '--quick',
                  '--out', str(out)]) as bench:
        lines = read_until(bench, lambda seen: any('bare hop at' in s for s in seen), 60,
                           'the first measurement')
        domain = lines[0].split('ROS_DOMAIN_ID=')[1].split(')')[0]
        bench.stdout.close()
        code, err = finish(bench, 120)
        print(f'stderr: {err.strip()}')
    assert code == 141, err
    assert 'Traceback' not in err and 'BrokenPipeError' not in err, err
    assert err.strip().splitlines() == [
        'telesurgery-bench: standard output was closed (its reader ended): stopped, every node '
        f'it started is stopped; suites finished: none (results in {out})'], err
    assert not processes_with_env('ROS_DOMAIN_ID', domain), 'a bench process was left running'


@pytest.mark.ros
def test_a_demo_whose_output_is_closed_stops_and_keeps_its_run(tmp_path):
    runs = tmp_path / 'runs'
    with running([sys.executable, '-m', 'telesurgery_ros.demo', '--duration', '60',
                  '--profile', 'lan', '--runs-dir', str(runs), '--private-domain']) as demo:
        lines = read_until(demo, lambda seen: any('recording to' in s for s in seen), 60,
                           'the demo starting')
        domain = lines[0].split('ROS_DOMAIN_ID=')[1].strip()
        demo.stdout.close()            # its next line ("stack ready") finds no reader
        started = time.monotonic()
        code, err = finish(demo, 120)
        took = time.monotonic() - started
        print(f'the demo stopped {took:.1f} s after its output was closed; stderr: '
              f'{err.strip()}')
    (run_dir,) = list(runs.iterdir())
    assert code == 141, err
    assert 'Traceback' not in err and 'BrokenPipeError' not in err, err
    assert err.strip().splitlines()[-1] == (
        'telesurgery-demo: standard output was closed (its reader ended): stopped the stack; '
        f'the run, its summary included, is in {run_dir}/ (report.json)'), err
    assert took < 60, 'the demo ran its full duration instead of stopping'
    report = json.load(open(run_dir / 'report.json'))
    assert report['duration_s'] < 60 and (run_dir / 'run.mcap').stat().st_size > 0
    assert not processes_with_env('ROS_DOMAIN_ID', domain), 'a demo process was left running'


@pytest.mark.parametrize('argv0', ['-m', '-c'])
def test_a_node_interrupted_while_it_starts_ends_without_a_traceback(argv0):
    """
    SIGINT during a node program's imports ends it quietly, killed by SIGINT.

    Imported as a library (``-c`` here) nothing changes: Python's KeyboardInterrupt, with its
    traceback.
    """
    code = (f'import sys; sys.argv[0] = {argv0!r}\n'
            'import os, signal, time\n'
            'import telesurgery_ros.nodes\n'
            'os.kill(os.getpid(), signal.SIGINT)\n'
            'time.sleep(5)\n'
            'print("not interrupted")\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=30, cwd=ROOT)
    assert out.returncode == -signal.SIGINT, out
    assert 'not interrupted' not in out.stdout
    assert ('Traceback' in out.stderr) == (argv0 == '-c'), out.stderr
