"""
The ROS-native path: `colcon build` of this package and the install tree ros2 relies on.

``ros2 run telesurgery_ros <exe>`` needs ``lib/telesurgery_ros/<exe>``; ``ros2 launch``
needs ``share/telesurgery_ros/launch/*`` and every config/urdf file it references; ``ros2 pkg``
needs the ament index marker. The package is copied (tracked and untracked-but-not-ignored
files, as a clone would have them) into a fresh workspace and built with colcon from PyPI.
"""
import ast
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = 'telesurgery_ros'
DATA_FOLDERS = ('launch', 'config', 'urdf')


def source_files():
    out = subprocess.run(
        ['git', 'ls-files', '--cached', '--others', '--exclude-standard', '-z'],
        cwd=ROOT, check=True, capture_output=True).stdout.decode()
    return [f for f in out.split('\0') if f and os.path.exists(os.path.join(ROOT, f))]


def console_scripts(setup_py):
    """Names of the console scripts declared in setup.py (read, not executed)."""
    tree = ast.parse(open(setup_py).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == 'entry_points':
            entry_points = ast.literal_eval(node.value)
            return [s.split('=')[0].strip() for s in entry_points.get('console_scripts', [])]
    return []


def colcon_build(workspace, edit_setup=None):
    """Copy the package into ``workspace/src`` and build it; return the package's prefix."""
    src = os.path.join(workspace, 'src', PKG)
    for rel in source_files():
        os.makedirs(os.path.dirname(os.path.join(src, rel)), exist_ok=True)
        shutil.copy2(os.path.join(ROOT, rel), os.path.join(src, rel))
    if edit_setup is not None:
        path = os.path.join(src, 'setup.py')
        text = open(path).read()
        edited = edit_setup(text)
        assert edited != text, 'the setup.py edit did not apply'
        open(path, 'w').write(edited)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), 'colcon'), 'build',
         '--event-handlers', 'console_direct-'],
        cwd=workspace, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f'colcon build failed:\n{result.stdout}\n{result.stderr}'
    return os.path.join(workspace, 'install', PKG)


def install_tree_problems(prefix, source_root=ROOT):
    """List what `ros2 run` / `ros2 launch` would miss in an install prefix."""
    problems = []
    share = os.path.join(prefix, 'share', PKG)
    expected = [os.path.join(share, 'package.xml'),
                os.path.join(prefix, 'share', 'ament_index', 'resource_index', 'packages', PKG)]
    for folder in DATA_FOLDERS:
        for root, _dirs, files in os.walk(os.path.join(source_root, folder)):
            rel_root = os.path.relpath(root, source_root)
            expected += [os.path.join(share, rel_root, f) for f in files
                         if not f.endswith('.pyc')]
    problems += [f'missing: {os.path.relpath(p, prefix)}' for p in expected
                 if not os.path.isfile(p)]
    for script in console_scripts(os.path.join(source_root, 'setup.py')):
        exe = os.path.join(prefix, 'lib', PKG, script)
        if not (os.path.isfile(exe) and os.access(exe, os.X_OK)):
            problems.append(f'missing executable: lib/{PKG}/{script}')
    return problems


@pytest.fixture(scope='module')
def installed(tmp_path_factory):
    return colcon_build(str(tmp_path_factory.mktemp('ws')))


def test_install_tree_complete(installed):
    problems = install_tree_problems(installed)
    assert not problems, '\n'.join(problems)
    print(f'install tree complete: {len(console_scripts(os.path.join(ROOT, "setup.py")))} '
          'executables under lib/telesurgery_ros')


def test_installed_package_is_importable_from_install_prefix(installed):
    site = os.path.join(installed, 'lib', f'python{sys.version_info[0]}.{sys.version_info[1]}',
                        'site-packages')
    out = subprocess.run(
        [sys.executable, '-c', 'import telesurgery_ros, sys; print(telesurgery_ros.__file__)'],
        env=dict(os.environ, PYTHONPATH=site), cwd='/', capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith(site)


def test_install_check_catches_a_data_folder_left_out(tmp_path):
    """The same check on a build whose setup.py forgot config/: it must report the files."""
    prefix = colcon_build(str(tmp_path), edit_setup=lambda text: text.replace(
        "*data_tree('config'),", ''))
    problems = install_tree_problems(prefix)
    config_files = [f for f in source_files() if f.startswith('config/')]
    assert config_files, 'no config files to check'
    for rel in config_files:
        assert f'missing: share/{PKG}/{rel}' in problems


def test_sourced_install_finds_the_package_share(installed):
    """`source install/setup.bash`, as the README says, then the ament index knows us."""
    workspace = os.path.dirname(os.path.dirname(installed))
    script = (f'source {workspace}/install/setup.bash && {sys.executable} -c '
              '"from ament_index_python.packages import get_package_share_directory as g; '
              f"print(g('{PKG}'))\"")
    out = subprocess.run(['bash', '-c', script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == os.path.join(installed, 'share', PKG)


@pytest.mark.parametrize('launch_file', sorted(
    os.listdir(os.path.join(ROOT, 'launch'))))
def test_installed_launch_files_pass_the_runners_validation(installed, launch_file):
    """Each installed launch file resolves every node and parameter file from the install."""
    workspace = os.path.dirname(os.path.dirname(installed))
    path = os.path.join(installed, 'share', PKG, 'launch', launch_file)
    script = (f'source {workspace}/install/setup.bash && cd / && {sys.executable} -m '
              f'telesurgery_ros.launch_runner --check {path}')
    out = subprocess.run(['bash', '-c', script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    share = os.path.join(installed, 'share', PKG)
    lib = os.path.join(installed, 'lib', PKG)
    assert f'{share}/config/' in out.stdout, 'parameter files must come from the install'
    assert f'{lib}/' in out.stdout, 'executables must come from the install'
    assert ROOT + '/config' not in out.stdout and ROOT + '/launch' not in out.stdout
