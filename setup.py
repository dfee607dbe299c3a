"""ament_python build for telesurgery_ros (colcon and pip alike)."""
from glob import glob
import os

from setuptools import find_packages, setup

package_name = 'telesurgery_ros'


def data_tree(folder):
    """List (install dir, [files]) for every folder below `folder`, so nothing is left out."""
    entries = []
    for root, _dirs, files in sorted(os.walk(folder)):
        paths = sorted(os.path.join(root, name) for name in files)
        if paths:
            entries.append((os.path.join('share', package_name, root), paths))
    return entries


setup(
    name=package_name,
    version='0.1.0',
    packages=find_packages(exclude=['test', 'test.*']),
    data_files=[
        ('share/ament_index/resource_index/packages', ['resource/' + package_name]),
        ('share/' + package_name, ['package.xml']),
        ('share/' + package_name + '/launch', glob('launch/*_launch.yaml')),
        *data_tree('config'),
        *data_tree('urdf'),
    ],
    # The ROS 2 packages (rclpy, message packages) are not listed here: a ROS 2 install
    # provides them, and the pip-only set-up pins them in requirements.txt.
    install_requires=['setuptools', 'numpy', 'PyYAML', 'pybullet', 'transforms3d', 'pillow'],
    extras_require={'test': ['pytest', 'catkin_pkg']},
    zip_safe=True,
    maintainer='telesurgery_ros developers',
    maintainer_email='dev@telesurgery-ros.invalid',
    description='ROS 2 teleoperation stack for a simulated surgical arm over an emulated network',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'telesurgery-bench = telesurgery_ros.bench.cli:main',
            'telesurgery-launch = telesurgery_ros.launch_runner:main',
            'telesurgery-demo = telesurgery_ros.demo:main',
            'telesurgery-certs = telesurgery_ros.tools.certs:main',
            'master_console = telesurgery_ros.nodes.master_console:main',
            'network_relay = telesurgery_ros.nodes.network_relay:main',
            'slave_controller = telesurgery_ros.nodes.slave_controller:main',
            'safety_watchdog = telesurgery_ros.nodes.safety_watchdog:main',
            'arm_viewer = telesurgery_ros.nodes.arm_viewer:main',
            'site_link = telesurgery_ros.nodes.site_link:main',
        ],
        # telesurgery_ros.testing's fixtures (telesurgery_stack) for every pytest run
        'pytest11': ['telesurgery_ros = telesurgery_ros.testing.plugin'],
    },
)
