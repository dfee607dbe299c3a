"""package.xml and setup.py agree, and package.xml names every third-party import."""
import ast
import os
import sys

from catkin_pkg.package import parse_package

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Python module -> the dependency key a ROS user's rosdep resolves.
MODULE_KEYS = {
    'numpy': 'python3-numpy',
    'yaml': 'python3-yaml',
    'pybullet': 'python3-pybullet',
    'transforms3d': 'python3-transforms3d',
    'matplotlib': 'python3-matplotlib',
    'mcap': 'python3-mcap',
    'mcap_ros2': 'python3-mcap',
    'PIL': 'python3-pil',
    'cryptography': 'python3-cryptography',
    'zenoh': 'python3-eclipse-zenoh',
    'pytest': 'python3-pytest',
}


def package_imports():
    """Top-level modules imported anywhere in the package (not tests)."""
    found = {}
    for root, _dirs, files in os.walk(os.path.join(ROOT, 'telesurgery_ros')):
        for name in files:
            if not name.endswith('.py'):
                continue
            path = os.path.join(root, name)
            for node in ast.walk(ast.parse(open(path).read(), path)):
                if isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    mods = [node.module]
                else:
                    continue
                for mod in mods:
                    found.setdefault(mod.split('.')[0], os.path.relpath(path, ROOT))
    return found


def setup_version():
    tree = ast.parse(open(os.path.join(ROOT, 'setup.py')).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg == 'version':
            return ast.literal_eval(node.value)
    raise AssertionError('setup.py has no version=')


def test_versions_match():
    package = parse_package(os.path.join(ROOT, 'package.xml'))
    import telesurgery_ros
    assert package.version == setup_version() == telesurgery_ros.__version__


def test_manifest_is_format_3_ament_python():
    package = parse_package(os.path.join(ROOT, 'package.xml'))
    assert package.package_format == 3
    assert package.get_build_type() == 'ament_python'
    package.validate()


def test_every_third_party_import_is_an_exec_depend():
    package = parse_package(os.path.join(ROOT, 'package.xml'))
    declared = {d.name for d in package.exec_depends}
    missing = []
    for module, where in sorted(package_imports().items()):
        if module in sys.stdlib_module_names or module == 'telesurgery_ros':
            continue
        key = MODULE_KEYS.get(module, module)
        if key not in declared:
            missing.append(
                f'{module} (imported in {where}) needs <exec_depend>{key}</exec_depend>')
    assert not missing, '\n'.join(missing)


def test_ros_wheels_are_not_install_requires():
    """A ROS 2 install provides rclpy and the messages; pip must not try to."""
    tree = ast.parse(open(os.path.join(ROOT, 'setup.py')).read())
    requires = next(ast.literal_eval(n.value) for n in ast.walk(tree)
                    if isinstance(n, ast.keyword) and n.arg == 'install_requires')
    assert not [r for r in requires if r.startswith(('ros-', 'rclpy'))]
    pinned = [line for line in open(os.path.join(ROOT, 'requirements.txt'))
              if line.strip() and not line.startswith('#')]
    assert all('==' in line for line in pinned), 'requirements.txt must pin every package'
    assert any(line.startswith('ros-rclpy==') for line in pinned)
