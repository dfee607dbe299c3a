"""
The embedded launch runner: the launch_yaml subset it interprets, and its process handling.

The interpreter tests read tiny launch files under ``test/launch/``; the process tests run
``telesurgery-launch`` as a real subprocess over stand-in nodes (``test/launch/bin/
fake_node.py``) and check what ends how, and that nothing is left behind.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from harness import alive, pids, wait_for
import pytest

from telesurgery_ros import launch_runner, resources
from telesurgery_ros.launch_runner import describe, LaunchFileError

HERE = os.path.dirname(os.path.abspath(__file__))
FILES = os.path.join(HERE, 'launch')
BIN = os.path.join(FILES, 'bin')
ROOT = os.path.dirname(HERE)


@pytest.fixture(autouse=True)
def fake_nodes_on_path(monkeypatch):
    monkeypatch.setenv('PATH', BIN + os.pathsep + os.environ['PATH'])


def path(name):
    return os.path.join(FILES, name)


def ros_args(spec):
    argv = spec.argv()
    return argv[argv.index('--ros-args'):]


def test_substitutions_defaults_and_overrides():
    nodes = describe(path('subst_launch.yaml'), {}).nodes
    assert len(nodes) == 1
    args = ros_args(nodes[0])
    assert args[:3] == ['--ros-args', '-r', '__node:=subst_node']
    assert ['--params-file', path('params.yaml')] == args[3:5]
    params = [args[i + 1] for i, a in enumerate(args) if a == '-p']
    assert params == ['profile:=lan', 'seed:=7', 'greeting:=hello-lan', 'home:=fallback',
                      f'share:={resources.share_directory()}', 'gain:=0.5', 'enabled:=true']
    nodes = describe(path('subst_launch.yaml'), {'profile': 'rome_beijing_2024',
                                                 'seed': '3'}).nodes
    assert 'greeting:=hello-rome_beijing_2024' in ros_args(nodes[0])
    assert 'seed:=3' in ros_args(nodes[0])


def test_env_substitution_reads_the_environment(monkeypatch):
    monkeypatch.setenv('TELESURGERY_TEST_UNSET_VARIABLE', 'from-env')
    assert 'home:=from-env' in ros_args(describe(path('subst_launch.yaml'), {}).nodes[0])


def test_include_namespaces_and_remaps():
    nodes = {n.name: n for n in describe(path('include_launch.yaml'), {}).nodes}
    assert sorted(nodes) == ['child_node', 'root_node']
    child = ros_args(nodes['child_node'])
    # group + push-ros-namespace (patient) + nested group (inner) + node namespace (arm)
    assert ['-r', '__ns:=/patient/inner/arm'] == child[3:5]
    assert nodes['child_node'].full_name == '/patient/inner/arm/child_node'
    # the group scope ends: the root node is back in the root namespace
    root = ros_args(nodes['root_node'])
    assert not any(a.startswith('__ns:=') for a in root)
    assert root[-2:] == ['-r', 'chatter:=talk/patient']
    nodes = {n.name: n for n in describe(path('include_launch.yaml'), {'site': 'a'}).nodes}
    assert nodes['child_node'].namespace == '/a/inner/arm'


@pytest.mark.parametrize('arguments, expected', [
    ({}, ['always', 'headless', 'relay_node']),
    ({'gui': 'true', 'link': 'zenoh'}, ['always', 'link_node', 'viewer']),
    ({'gui': 'TRUE', 'link': 'dds'}, ['always', 'relay_node', 'viewer']),
    ({'gui': '0'}, ['always', 'headless', 'relay_node']),
])
def test_if_and_unless_conditions_as_launch_evaluates_them(arguments, expected):
    nodes = describe(path('condition_launch.yaml'), arguments).nodes
    assert sorted(n.name for n in nodes) == expected


def test_a_condition_that_is_not_a_boolean_is_refused_naming_the_line():
    with pytest.raises(LaunchFileError) as info:
        describe(path('bad_condition_launch.yaml'), {})
    assert ":3: tag 'node': condition if: '$(var gui)' evaluates to 'maybe'" in str(info.value)


@pytest.mark.parametrize('name, message', [
    ('unsupported_tag_launch.yaml', ":3: tag 'executable' is not supported"),
    ('unsupported_subst_launch.yaml', ':7: substitution $(eval 1 + 1) is not supported'),
    ('unsupported_attr_launch.yaml', ":3: tag 'node': attribute(s) respawn not supported"),
    ('unquoted_default_launch.yaml', ":2: attribute 'default' must be a string"),
    ('wrong_params_launch.yaml', ':2: parameter file'),
])
def test_refuses_what_it_does_not_support_naming_file_and_line(name, message):
    with pytest.raises(LaunchFileError) as info:
        describe(path(name), {})
    text = str(info.value)
    assert text.startswith(path(name) + ':'), text
    assert message in text, text


def test_argument_errors_name_the_argument():
    with pytest.raises(LaunchFileError, match="launch argument 'inner_name' is required"):
        describe(path('child_launch.yaml'), {})
    with pytest.raises(LaunchFileError, match='unknown launch argument.*typo'):
        describe(path('subst_launch.yaml'), {'typo': '1'})
    with pytest.raises(ValueError, match="name:=value, got 'profile=lan'"):
        launch_runner.parse_launch_arguments(['profile=lan'])


def test_param_file_sections_match_like_rcl():
    match = launch_runner._matches_node
    assert match('/**', '/psm1/slave_controller')
    assert match('slave_controller', '/slave_controller')
    assert not match('slave_controller', '/site/slave_controller')
    assert match('/**/slave_controller', '/site/slave_controller')
    assert not match('/**/slave_controller', '/site/network_relay')


def run_cli(*args, timeout=30):
    return subprocess.run([sys.executable, '-m', 'telesurgery_ros.launch_runner', *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_cli_check_prints_processes_and_refuses_with_one_line():
    ok = run_cli('--check', path('include_launch.yaml'), 'site:=left')
    assert ok.returncode == 0, ok.stderr
    assert 'processes (2):' in ok.stdout and '__ns:=/left/inner/arm' in ok.stdout
    bad = run_cli('--check', path('unsupported_tag_launch.yaml'))
    assert bad.returncode == 2
    assert 'Traceback' not in bad.stderr
    assert bad.stderr.strip().count('\n') == 0, bad.stderr
    assert "unsupported_tag_launch.yaml:3: tag 'executable'" in bad.stderr


def test_cli_check_validates_the_package_launch_files():
    """What `make test` and the colcon check rely on: every shipped launch file is valid."""
    launch_dir = os.path.join(ROOT, 'launch')
    files = sorted(f for f in os.listdir(launch_dir) if f.endswith('_launch.yaml'))
    assert {'teleop_launch.yaml', 'surgeon_site_launch.yaml',
            'patient_site_launch.yaml'} <= set(files)
    counts = {}
    for name in files:
        out = run_cli('--check', os.path.join(launch_dir, name))
        assert out.returncode == 0, f'{name}: {out.stderr}'
        counts[name] = int(re.search(r'processes \((\d+)\)', out.stdout).group(1))
    print(f'processes per launch file: {counts}')
    assert counts['teleop_launch.yaml'] == 4
    assert counts['surgeon_site_launch.yaml'] == 1
    assert counts['patient_site_launch.yaml'] == 3


def test_check_resolves_everything_from_an_install_prefix(tmp_path):
    """As after `colcon build` + `source install/setup.bash`: share/ and lib/ of the prefix."""
    prefix = tmp_path / 'install'
    share = prefix / 'share' / 'telesurgery_ros'
    marker = prefix / 'share' / 'ament_index' / 'resource_index' / 'packages'
    marker.mkdir(parents=True)
    (marker / 'telesurgery_ros').write_text('')
    for folder in ('launch', 'config'):
        shutil.copytree(os.path.join(ROOT, folder), share / folder)
    lib = prefix / 'lib' / 'telesurgery_ros'
    lib.mkdir(parents=True)
    for name in ('master_console', 'network_relay', 'slave_controller', 'safety_watchdog'):
        (lib / name).write_text('#!/bin/sh\n')
        (lib / name).chmod(0o755)
    # PYTHONPATH: immune to a concurrent `pip install -e .` re-writing the editable finder
    env = dict(os.environ, AMENT_PREFIX_PATH=str(prefix), PYTHONPATH=ROOT)
    out = subprocess.run([sys.executable, '-m', 'telesurgery_ros.launch_runner', '--check',
                          'telesurgery_ros', 'teleop_launch.yaml', 'profile:=lan'],
                         capture_output=True, text=True, timeout=30, cwd=str(tmp_path), env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(f'[installed executable {lib}/') == 4, out.stdout
    assert f'--params-file {share}/config/network_relay.yaml' in out.stdout
    assert str(ROOT) + '/config' not in out.stdout


# --- processes --------------------------------------------------------------------------


def start_runner(launcher, *args):
    argv = [sys.executable, '-m', 'telesurgery_ros.launch_runner', '--embedded', *args]
    proc = launcher.start_argv('runner', argv)
    wait_for(lambda: len(pids(proc)) == 3 and proc.output().count('argv: ') == 3, 30,
             what='three stand-in nodes started')
    return proc


def test_sigint_stops_every_node_and_reports_each_exit(launcher):
    runner = start_runner(launcher, path('procs_launch.yaml'))
    children = pids(runner)
    for name in ('alpha', 'beta', 'gamma'):
        assert f'[{name}] argv: ' in runner.output()
    runner.send(signal.SIGINT)
    assert runner.wait(30) == 0, runner.output()
    out = runner.output()
    for name in ('alpha', 'beta', 'gamma'):
        assert f'[{name}] exited: exit code 0' in out
        assert f'[{name}] stopping on SIGINT' in out
    assert not [p for p in children.values() if alive(p)]


def test_a_node_that_ignores_sigint_is_terminated(launcher):
    runner = start_runner(launcher, '--sigint-timeout', '1', path('procs_launch.yaml'),
                          'mode:=stubborn')
    children = pids(runner)
    started = time.monotonic()
    runner.send(signal.SIGTERM)
    assert runner.wait(30) == 1, runner.output()
    print(f'stop with one stubborn node took {time.monotonic() - started:.2f} s')
    out = runner.output()
    assert '[gamma] exited: killed by SIGTERM (after SIGTERM)' in out
    assert '[alpha] exited: exit code 0' in out
    assert 'not clean: gamma' in out
    assert not [p for p in children.values() if alive(p)]


def test_a_crashed_node_is_reported_and_the_others_keep_running(launcher):
    runner = start_runner(launcher, path('procs_launch.yaml'), 'mode:=crash')
    wait_for(lambda: '[gamma] exited: exit code 3 (on its own)' in runner.output(), 20,
             what='the crash to be reported')
    time.sleep(0.5)
    children = pids(runner)
    assert runner.running() and alive(children['alpha']) and alive(children['beta'])
    runner.send(signal.SIGINT)
    assert runner.wait(30) == 1
    assert 'not clean: gamma' in runner.output()
    assert not [p for p in children.values() if alive(p)]


def test_exit_on_node_exit_stops_the_launch(launcher):
    runner = start_runner(launcher, '--exit-on-node-exit', path('procs_launch.yaml'),
                          'mode:=crash')
    assert runner.wait(30) == 1, runner.output()
    out = runner.output()
    assert 'gamma exited: stopping the launch (--exit-on-node-exit)' in out
    assert '[alpha] exited: exit code 0' in out and '[beta] exited: exit code 0' in out
    assert not [p for p in pids(runner).values() if alive(p)]


def test_nodes_die_with_a_killed_runner(launcher):
    runner = start_runner(launcher, path('procs_launch.yaml'), 'mode:=stubborn')
    children = pids(runner)
    runner.send(signal.SIGKILL)
    runner.wait(10)
    wait_for(lambda: not [p for p in children.values() if alive(p)], 10,
             what='every node to die with the runner')
